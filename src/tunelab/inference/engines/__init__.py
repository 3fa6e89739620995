"""Inference engines: one interface (``base.Engine``) with request and completion types (``types``), the
transformers engine (``hf``, with continuous batching in ``continuous`` and per-row decoding in ``decoding``)
and vLLM (``vllm``, optional)."""
