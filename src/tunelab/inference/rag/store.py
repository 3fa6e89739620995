"""The chromadb side of RAG: a persistent collection with cosine distance whose vectors tunelab computes itself
(chromadb's default embedding function downloads an ONNX model at run time, which fails offline), and which
records the embedding model it was built with, so questions are embedded by the same one.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError
from tunelab.models.embeddings import RETRIEVAL, SentenceEmbedder, default_model_folder, embedder_folder, load_embedder

DEFAULT_COLLECTION = "tunelab"
DEFAULT_MODEL = "default"  # the bundled all-MiniLM-L6-v2, wherever this installation keeps it
MODEL_KEY = "tunelab_embedding_model"
DATABASE_FILE = "chroma.sqlite3"


def check_chromadb() -> None:
    if importlib.util.find_spec("chromadb") is None:
        raise ConfigError("RAG needs chromadb: pip install 'tunelab[rag]'")


# chromadb's rule for a collection name, checked here so a wrong one fails before any model loads
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{1,510})[A-Za-z0-9]$")


def check_collection_name(name: str, flag: str) -> None:
    if not COLLECTION_NAME.match(name) or ".." in name:
        raise ConfigError(f"{flag} '{name}' is not a collection name: 3-512 letters, digits, '.', '_' or '-', "
                          "starting and ending with a letter or digit")


def check_database(db: str, flag: str) -> Path:
    """An index folder that ``tunelab rag index`` wrote: checked without importing chromadb."""
    check_chromadb()
    path = Path(db).expanduser()
    if not (path / DATABASE_FILE).is_file():
        what = "does not exist" if not path.exists() else "holds no index" if path.is_dir() else "is a file"
        raise ConfigError(f"{flag} '{db}' {what}; build one with: tunelab rag index DOCS... --db {db}")
    return path


def client(db: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    db.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(db), settings=Settings(anonymized_telemetry=False))


def model_name(model: str | None) -> str:
    """How an index records its embedding model: ``default`` for the bundled one, else the folder's path."""
    if model is None:
        return DEFAULT_MODEL
    folder = embedder_folder(model, RETRIEVAL)
    try:
        bundled = default_model_folder(RETRIEVAL).resolve()
    except ConfigError:  # the bundled model is not installed: a folder given is never it
        return str(folder)
    return DEFAULT_MODEL if folder == bundled else str(folder)


def open_for_writing(db: Path, collection: str, model: str | None) -> Any:
    """The collection to index into, created (cosine distance) when new; refused when it was built with another
    embedding model, whose vectors cannot be compared with this one's."""
    recorded = model_name(model)
    found = client(db).get_or_create_collection(collection, embedding_function=None,
                                                configuration={"hnsw": {"space": "cosine"}},
                                                metadata={MODEL_KEY: recorded})
    if (found.metadata or {}).get(MODEL_KEY, recorded) != recorded:
        raise ConfigError(f"collection '{collection}' in {db} was built with embedding model "
                          f"{found.metadata[MODEL_KEY]}, not {recorded}; index into another --collection, or "
                          f"give --embedding-model {found.metadata[MODEL_KEY]}")
    return found


def open_for_reading(db: Path, collection: str, flag: str = "--rag-db") -> tuple[Any, SentenceEmbedder]:
    """An existing collection and the embedder it was built with."""
    from chromadb.errors import NotFoundError

    store = client(db)
    try:
        found = store.get_collection(collection, embedding_function=None)
    except (NotFoundError, ValueError):
        names = ", ".join(sorted(c.name for c in store.list_collections())) or "none"
        raise ConfigError(f"{flag} '{db}' has no collection '{collection}' (it has: {names})") from None
    recorded = (found.metadata or {}).get(MODEL_KEY, DEFAULT_MODEL)
    try:
        embedder = load_embedder(None if recorded == DEFAULT_MODEL else recorded, RETRIEVAL)
    except ConfigError as error:
        raise ConfigError(f"{flag} '{db}': collection '{collection}' was built with embedding model {recorded}, "
                          f"which cannot be loaded here: {error}") from None
    return found, embedder
