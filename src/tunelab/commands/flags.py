"""The checks of the flags several commands share, run before anything heavy is imported or any model loads: a
bad value of any flag is one error naming the flag (exit 2), never a traceback after minutes of loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.inference.rag.retriever import DEFAULT_MAX_DISTANCE, DEFAULT_TEMPLATE, DEFAULT_TOP_K
from tunelab.inference.rag.store import DEFAULT_COLLECTION

ATTENTION_CHOICES = ("auto", "sdpa", "fa2", "eager", "disabled")


def at_least(minimum: int, **flags: int | None) -> None:
    """Each given flag (``max_new_tokens=0`` names ``--max-new-tokens``) is None or at least ``minimum``."""
    for name, value in flags.items():
        if value is not None and value < minimum:
            raise TunelabError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    at_least(1, max_new_tokens=max_new_tokens)
    if temperature < 0:
        raise TunelabError(f"--temperature must be at least 0 (0 = greedy), got {temperature:g}")
    if not 0 < top_p <= 1:
        raise TunelabError(f"--top-p must be in (0, 1], got {top_p:g}")


def load_options(trust_remote_code: bool, revision: str, attn: str) -> Any:
    """How models load (tunelab.inference.loading.LoadOptions); an unknown --attn is refused."""
    from tunelab.inference.loading import LoadOptions

    if attn not in ATTENTION_CHOICES:
        raise TunelabError(f"--attn '{attn}' is not one of {', '.join(ATTENTION_CHOICES)}")
    return LoadOptions(trust_remote_code=trust_remote_code, revision=revision, flash_attn=attn)


@dataclass(frozen=True)
class ModelFlags:
    """--model, --adapter, --template and how the model loads, as the commands that load one take them."""

    model: str | None = None
    adapter: str | None = None
    template: str | None = None
    trust_remote_code: bool = False
    revision: str = "main"
    attn: str = "auto"

    def check(self, use: str) -> Any:
        """Every one of these flags checked (paths, what the model can do: ``use`` generate or score, the template
        name, --attn); returns the LoadOptions to load with."""
        from tunelab.data.templates import check_template_name
        from tunelab.inference.loading import check_inference_sources

        options = load_options(self.trust_remote_code, self.revision, self.attn)
        check_template_name(self.template, "--template")
        check_inference_sources(self.model, self.adapter, use=use)
        return options


@dataclass(frozen=True)
class SamplingFlags:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    # budget forcing of a reasoning model (inference/engines/budget.py); all unset: it thinks as it likes
    max_thinking_tokens: int | None = None
    min_thinking_tokens: int = 0
    num_wait: int = 0
    wait_text: str = "Wait"
    max_answer_tokens: int | None = None

    def check(self) -> None:
        from tunelab.inference.engines.types import RequestError

        check_sampling(self.max_new_tokens, self.temperature, self.top_p)
        try:
            self.budget().check()
        except RequestError as error:
            raise TunelabError(f"--{(error.param or '').replace('_', '-')}: {error}") from None

    def budget(self) -> Any:
        from tunelab.inference.engines.budget import ThinkingBudget

        return ThinkingBudget.of(self)


@dataclass(frozen=True)
class RagFlags:
    """--rag-db and its settings: retrieved chunks as clues in each question (inference/rag)."""

    db: str | None = None
    collection: str = DEFAULT_COLLECTION
    top_k: int = DEFAULT_TOP_K
    max_distance: float = DEFAULT_MAX_DISTANCE  # 2, the largest cosine distance: every chunk found is a clue
    template: str = DEFAULT_TEMPLATE

    def check(self) -> None:
        """The values and the index folder, without importing chromadb; settings given without --rag-db are
        refused rather than ignored."""
        from tunelab.inference.rag.retriever import check_settings
        from tunelab.inference.rag.store import check_collection_name, check_database

        check_settings(self.top_k, self.max_distance, self.template)
        check_collection_name(self.collection, "--rag-collection")
        if self.db is not None:
            check_database(self.db, "--rag-db")
        if self.db is None and self != RagFlags():
            raise TunelabError("--rag-collection, --rag-top-k, --rag-max-distance and --rag-template need --rag-db")

    def retriever(self) -> Any:
        """The opened index (its embedding model loaded), or None without --rag-db."""
        if self.db is None:
            return None
        from tunelab.console import console
        from tunelab.inference.rag.retriever import Retriever

        with console.status(f"opening the RAG index {self.db} ..."):
            return Retriever(self.db, self.collection, top_k=self.top_k, max_distance=self.max_distance,
                             template=self.template)


def load_predictor(flags: ModelFlags, sampling: SamplingFlags, options: Any, rag: Any = None) -> Any:
    """The Predictor for chat and predict, with a spinner in a terminal while the model loads; ``rag`` a
    Retriever (RagFlags.retriever) or None."""
    from tunelab.console import console
    from tunelab.inference.loading import base_model_for
    from tunelab.inference.predictor import Predictor

    loading = f"loading {base_model_for(flags.model, flags.adapter)}" + (
        f" with adapter {flags.adapter}" if flags.adapter else "") + " ..."
    with console.status(loading):
        return Predictor(flags.model, adapter=flags.adapter, template=flags.template,
                         max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                         top_p=sampling.top_p, options=options, budget=sampling.budget(), rag=rag)


def output_file(path: str, flag: str) -> Path:
    """An output path must be a file: a folder there is an error before any work starts."""
    target = Path(path)
    if target.is_dir():
        raise TunelabError(f"{flag} '{path}' is a folder; give a file path, e.g. {target / 'out.jsonl'}")
    if target.parent.exists() and not target.parent.is_dir():
        raise TunelabError(f"{flag} '{path}': '{target.parent}' is a file, not a folder")
    return target


def output_folder(path: str, flag: str) -> Path:
    """An output folder: a file there is an error before any work starts."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise TunelabError(f"{flag} '{path}' is a file; give a folder")
    return target


def check_encoding(encoding: str | None) -> None:
    import codecs

    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise TunelabError(f"--encoding '{encoding}' is not a text encoding Python knows (e.g. utf-8, gb18030, "
                               "latin-1)") from None
