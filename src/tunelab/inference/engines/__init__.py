"""Inference engines: one interface (``base.Engine``) with request and completion types (``types``), the
transformers engine (``hf``) and vLLM (``vllm``, optional). ``ENGINES`` names them for configs and flags."""

from __future__ import annotations

ENGINES = ("hf", "vllm")
