"""Retrieval at inference: the chunks nearest to a question, and the question rewritten with those close enough
as clues (``<rag>…</rag>`` before it by default). Chat, predict, eval, the server and the web UI all put clues
in the prompt through ``Retriever.augment``, so a prompt reads the same whichever asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError
from tunelab.inference.rag.store import DEFAULT_COLLECTION, check_database, open_for_reading

DEFAULT_TOP_K = 3
# Cosine distance (1 - cosine similarity) beyond which a chunk is no clue. With the bundled all-MiniLM-L6-v2 the
# right passage of half the Alpaca instructions lies within 0.35, and 0.5 keeps 69 % of them while 72 % of
# questions whose passage is not indexed get no clue (docs/benchmarks.md, RAG).
DEFAULT_MAX_DISTANCE = 0.5
DEFAULT_TEMPLATE = "<rag>\n{context}\n</rag>\n{question}"
PLACEHOLDERS = ("{context}", "{question}")


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk: its text, where it comes from (file; 1-based record of a data file, None for a whole
    text file; 1-based chunk within that) and its cosine distance to the question."""

    text: str
    source: str
    record: int | None
    chunk: int
    distance: float

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text, "source": self.source, "record": self.record, "chunk": self.chunk,
                "distance": round(self.distance, 4)}

    def where(self) -> str:
        """File (relative to the working folder when inside it), record and chunk, for people to read."""
        path = Path(self.source)
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        return f"{shown}" + (f" record {self.record}" if self.record else "") + f" chunk {self.chunk}"


def check_template(template: str, flag: str = "--rag-template") -> str:
    """A template needs both places; ``\\n`` typed in a shell flag means a line break."""
    template = template.replace("\\n", "\n")
    missing = [name for name in PLACEHOLDERS if name not in template]
    if missing:
        raise ConfigError(f"{flag} must contain {' and '.join(missing)} (default: {DEFAULT_TEMPLATE!r})")
    return template


def check_settings(top_k: int, max_distance: float | None, template: str) -> str:
    """The retrieval settings checked as --rag-top-k, --rag-max-distance, --rag-template; the template back."""
    if top_k < 1:
        raise ConfigError(f"--rag-top-k must be at least 1, got {top_k}")
    if max_distance is not None and not 0 <= max_distance <= 2:
        raise ConfigError(f"--rag-max-distance is a cosine distance, between 0 and 2; got {max_distance:g}")
    return check_template(template)


def last_user_text(messages: list[dict]) -> tuple[int | None, str]:
    """(index, text) of the last user message: the question retrieval searches with."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            content = messages[index].get("content")
            if isinstance(content, list):
                content = "\n".join(part.get("text", "") for part in content
                                    if isinstance(part, dict) and part.get("type") == "text")
            return index, content or ""
    return None, ""


class Retriever:
    """A chromadb index (``tunelab rag index``) opened for questions, and how its chunks enter a prompt."""

    def __init__(self, db: str, collection: str = DEFAULT_COLLECTION, *, top_k: int = DEFAULT_TOP_K,
                 max_distance: float | None = DEFAULT_MAX_DISTANCE, template: str = DEFAULT_TEMPLATE,
                 flag: str = "--rag-db") -> None:
        self.template = check_settings(top_k, max_distance, template)
        self.top_k, self.max_distance = top_k, max_distance
        self.db = check_database(db, flag)
        self.collection, self.embedder = open_for_reading(self.db, collection, flag)

    def search(self, questions: list[str], top_k: int | None = None) -> list[list[Hit]]:
        """The ``top_k`` nearest chunks to each question, nearest first, however far."""
        if not questions:
            return []
        count = min(top_k or self.top_k, self.collection.count())
        if count == 0:
            return [[] for _ in questions]
        found = self.collection.query(query_embeddings=self.embedder.embed(questions).numpy(), n_results=count,
                                      include=["documents", "metadatas", "distances"])
        return [[Hit(text, str(meta.get("source", "")), int(meta.get("record") or 0) or None,
                     int(meta.get("chunk") or 0), float(distance))
                 for text, meta, distance in zip(texts, metas, distances, strict=True)]
                for texts, metas, distances in zip(found["documents"], found["metadatas"], found["distances"],
                                                   strict=True)]

    def clues(self, questions: list[str]) -> list[list[Hit]]:
        """The chunks close enough (within ``max_distance``) to go into each question's prompt."""
        limit = float("inf") if self.max_distance is None else self.max_distance
        return [[hit for hit in hits if hit.distance <= limit] for hits in self.search(questions)]

    def prompt(self, question: str, hits: list[Hit]) -> str:
        """The question with its clues, as the template says; unchanged without clues."""
        if not hits:
            return question
        context = "\n".join(hit.text for hit in hits)
        return self.template.replace("{context}", context).replace("{question}", question)

    def augment(self, conversations: list[list[dict]]) -> tuple[list[list[dict]], list[list[Hit]]]:
        """Each conversation with clues put into its last user message, and the clues used; one search for all."""
        places = [last_user_text(messages) for messages in conversations]
        asked = [index for index, (where, text) in enumerate(places) if where is not None and text.strip()]
        clues: list[list[Hit]] = [[] for _ in conversations]
        for index, hits in zip(asked, self.clues([places[i][1] for i in asked]), strict=True):
            clues[index] = hits
        augmented = []
        for messages, (where, text), hits in zip(conversations, places, clues, strict=True):
            if not hits or where is None:
                augmented.append(messages)
                continue
            message = dict(messages[where])
            content = message.get("content")
            rendered = self.prompt(text, hits)
            if isinstance(content, list):  # text parts become one, images and the like stay
                message["content"] = [{"type": "text", "text": rendered},
                                       *(part for part in content if not (isinstance(part, dict)
                                                                          and part.get("type") == "text"))]
            else:
                message["content"] = rendered
            augmented.append([*messages[:where], message, *messages[where + 1:]])
        return augmented, clues
