"""``tunelab rag index``: documents into a chromadb collection, again and again as they change.

A chunk's id is its file, record, chunk number and a hash of its text, so indexing a changed file embeds only
the chunks that are new and deletes those gone; a file whose bytes and settings are unchanged is skipped without
being read; a file gone from an indexed folder loses its chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.registry import Skipped
from tunelab.errors import ConfigError
from tunelab.inference.rag.documents import (
    Document,
    cjk_share,
    content_hash,
    document_files,
    file_documents,
    iter_chunks,
)
from tunelab.inference.rag.store import DEFAULT_COLLECTION, open_for_writing
from tunelab.models.embeddings import RETRIEVAL, load_embedder

DEFAULT_OVERLAP = 32
WRITE_BATCH = 256

Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@dataclass
class IndexReport:
    """What one indexing run did, for its summary."""

    files: int = 0
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    added: int = 0
    removed: int = 0
    gone: int = 0  # files of an indexed folder that are no longer there
    total: int = 0
    chunk_size: int = 0  # tokens; 0 when no file was read
    cjk_share: float = 0.0  # of the letters added: high with an English embedding model means poor retrieval
    skipped: Skipped = field(default_factory=Skipped)


@dataclass
class _Plan:
    """One file's change: chunks to embed and add, ids to delete, kept ids whose metadata is refreshed."""

    add: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    refresh: dict[str, dict[str, Any]] = field(default_factory=dict)


def chunk_settings(embedder: Any, chunk_size: int | None, chunk_overlap: int | None) -> tuple[int, int]:
    """(size, overlap) in the embedding model's tokens: a chunk is never longer than the model reads, or its end
    would be left out of its vector."""
    limit = embedder.content_tokens
    size = limit if chunk_size is None else chunk_size
    if size > limit:
        raise ConfigError(f"--chunk-size {size} is more than the embedding model reads ({limit} tokens); its vectors "
                          f"would leave the rest of each chunk out; use at most {limit}")
    overlap = min(DEFAULT_OVERLAP, size // 4) if chunk_overlap is None else chunk_overlap
    if overlap >= size:
        raise ConfigError(f"--chunk-overlap {overlap} must be less than the chunk size ({size} tokens)")
    if not getattr(embedder.tokenizer, "is_fast", False):
        raise ConfigError("--embedding-model: its tokenizer has no fast (tokenizer.json) version, which chunking "
                          "needs for character offsets")
    return size, overlap


def index_documents(paths: list[str], db: str, *, collection: str = DEFAULT_COLLECTION,
                    embedding_model: str | None = None, chunk_size: int | None = None,
                    chunk_overlap: int | None = None, fields: list[str] | None = None, encoding: str | None = None,
                    skip_invalid: bool = False, progress: Progress | None = None) -> IndexReport:
    """Index ``paths`` (files and folders) into ``collection`` of the chromadb folder ``db``. Every file to read
    is read before the embedding model loads, so a bad record stops the run at once."""
    files = document_files(paths)
    store = open_for_writing(Path(db).expanduser(), collection, embedding_model)
    report = IndexReport(files=len(files))
    known = _known_chunks(store)
    settings = "\0".join([*(fields or []), str(chunk_size), str(chunk_overlap), encoding or ""])
    to_read: list[tuple[str, str, dict[str, dict[str, Any]], list[Document]]] = []
    for path in files:
        source = str(path)
        fingerprint = content_hash(path.read_bytes(), settings)
        existing = known.pop(source, {})
        if existing and all(meta.get("fingerprint") == fingerprint for meta in existing.values()):
            report.unchanged += 1
            continue
        documents = file_documents(path, fields or [], encoding=encoding, skip_invalid=skip_invalid,
                                   skipped=report.skipped)
        to_read.append((source, fingerprint, existing, documents))
        report.changed += bool(existing)
        report.new += not existing
    plans: list[_Plan] = []
    embedder = None
    if to_read:  # nothing new or changed: the embedding model is not needed
        embedder = load_embedder(embedding_model, RETRIEVAL)
        size, overlap = chunk_settings(embedder, chunk_size, chunk_overlap)
        report.chunk_size = size
        plans = [_plan(source, fingerprint, existing, documents, embedder.tokenizer, size, overlap)
                 for source, fingerprint, existing, documents in to_read]
    folders = [Path(p).expanduser().resolve() for p in paths if Path(p).expanduser().is_dir()]
    gone = [source for source in known
            if any(Path(source).is_relative_to(folder) for folder in folders) and not Path(source).exists()]
    plans += [_Plan(remove=list(known[source])) for source in gone]
    report.gone = len(gone)
    _apply(store, embedder, plans, report, progress)
    report.total = store.count()
    return report


def _plan(source: str, fingerprint: str, existing: dict[str, dict[str, Any]], documents: list[Document],
          tokenizer: Any, size: int, overlap: int) -> _Plan:
    """What changes for one file: its chunks now against those the collection holds."""
    plan = _Plan()
    for document, number, text in iter_chunks(documents, tokenizer, size, overlap):
        ident = f"{content_hash(source)}:{document.record or 0}:{number}:{content_hash(text)}"
        meta = {"source": source, "record": document.record or 0, "line": document.line or 0, "chunk": number,
                "fingerprint": fingerprint}
        if ident in existing:
            plan.refresh[ident] = meta
        else:
            plan.add.append((ident, text, meta))
    plan.remove = [ident for ident in existing if ident not in plan.refresh]
    return plan


def _known_chunks(store: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """{source: {id: metadata}} of everything in the collection (metadata only, no vectors)."""
    known: dict[str, dict[str, dict[str, Any]]] = {}
    found = store.get(include=["metadatas"])
    for ident, meta in zip(found["ids"], found["metadatas"] or [], strict=True):
        known.setdefault(str((meta or {}).get("source", "")), {})[ident] = dict(meta or {})
    return known


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _apply(store: Any, embedder: Any, plans: list[_Plan], report: IndexReport, progress: Progress | None) -> None:
    """Deletions first, then kept chunks' metadata, then new chunks embedded and written in batches."""
    removals = [ident for plan in plans for ident in plan.remove]
    for batch in _batches(removals, WRITE_BATCH):
        store.delete(ids=batch)
    report.removed = len(removals)
    refresh = {ident: meta for plan in plans for ident, meta in plan.refresh.items()}
    for batch in _batches(list(refresh), WRITE_BATCH):
        store.update(ids=batch, metadatas=[refresh[ident] for ident in batch])
    additions = [item for plan in plans for item in plan.add]
    if not additions:
        return
    with (progress or _no_progress)("embedding chunks", len(additions)) as advance:
        for batch in _batches(additions, WRITE_BATCH):
            vectors = embedder.embed([text for _, text, _ in batch]).numpy()
            store.add(ids=[ident for ident, _, _ in batch], documents=[text for _, text, _ in batch],
                      metadatas=[meta for _, _, meta in batch], embeddings=vectors)
            advance(len(batch))
    report.added = len(additions)
    report.cjk_share = cjk_share([text for _, text, _ in additions])


def _no_progress(_label: str, _total: int) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda _count: None)
