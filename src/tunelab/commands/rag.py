"""`tunelab rag index` and `tunelab rag query`: flags and files checked before the embedding model loads, a
progress bar while chunks are embedded, and a summary that counts every file, chunk and skipped record."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.commands.flags import at_least, check_encoding, output_folder
from tunelab.console import console, progress_bar, stdout
from tunelab.errors import TunelabError
from tunelab.inference.rag.retriever import Hit

QUERY_TOP_K = 5
SHOWN_CHARACTERS = 300
CJK_SHARE_WARNING = 0.3


def index_command(paths: list[str], db: str, *, collection: str, embedding_model: str | None,
                  chunk_size: int | None, chunk_overlap: int | None, fields: list[str], encoding: str | None,
                  skip_invalid: bool) -> None:
    from tunelab.inference.rag.documents import document_files
    from tunelab.inference.rag.store import check_chromadb, check_collection_name
    from tunelab.models.embeddings import RETRIEVAL, embedder_folder

    if not paths:
        raise TunelabError("give the documents to index: files or folders (text, Markdown, JSON, JSONL, CSV)")
    at_least(1, chunk_size=chunk_size)
    at_least(0, chunk_overlap=chunk_overlap)
    check_encoding(encoding)
    output_folder(db, "--db")
    check_collection_name(collection, "--collection")
    check_chromadb()
    embedder_folder(embedding_model, RETRIEVAL)
    files = document_files(paths)  # every path checked before the model loads
    from tunelab.inference.rag.index import index_documents

    console.print(f"indexing {_count(len(files), 'file')} into {db} (collection '{collection}')",
                  markup=False, highlight=False)
    report = index_documents(paths, db, collection=collection, embedding_model=embedding_model,
                             chunk_size=chunk_size, chunk_overlap=chunk_overlap, fields=fields, encoding=encoding,
                             skip_invalid=skip_invalid, progress=progress_bar)
    for reason, info in report.skipped.as_dict().items():
        console.print(f"skipped {_count(info['count'], 'record')}: {reason} "
                      f"(e.g. {info['examples'][0]})", markup=False, highlight=False)
    if embedding_model is None and report.cjk_share >= CJK_SHARE_WARNING:
        console.print(f"note: {report.cjk_share:.0%} of the new text is Chinese, Japanese or Korean, and the default "
                      "embedding model (all-MiniLM-L6-v2) was trained on English: retrieval will be poor; index with "
                      "--embedding-model PATH of a local Chinese or multilingual sentence-embedding model",
                      markup=False, highlight=False)
    gone = f", {report.gone} gone" if report.gone else ""
    stdout.print(f"[bold green]indexed[/bold green] {_count(report.files, 'file')} ({report.new} new, "
                 f"{report.changed} changed, {report.unchanged} unchanged and skipped{gone}): {report.added} chunks "
                 f"added, {report.removed} removed, {report.total} in collection '{collection}' of "
                 f"{Path(db).expanduser()}" + (f" (chunks of up to {report.chunk_size} tokens)" if report.chunk_size
                                               else ""), highlight=False)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def read_questions(path: str, field: str, encoding: str | None = None) -> list[str]:
    """The questions of a data file (JSONL, JSON, CSV, ...): each record's ``field``, named by line if missing."""
    from tunelab.data.readers import InvalidRecord, read_records
    from tunelab.errors import DataError

    questions = []
    for file, line, record in read_records(Path(path).expanduser(), encoding=encoding):
        if isinstance(record, InvalidRecord):
            raise record.error(file, line)
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"no question: expected a text field '{field}' (set --question-field)", file=str(file),
                            line=line)
        questions.append(value)
    return questions


def query_command(db: str, questions: list[str], *, questions_file: str | None, question_field: str,
                  collection: str, top_k: int, as_json: bool) -> None:
    from tunelab.inference.rag.store import check_collection_name, check_database

    at_least(1, top_k=top_k)
    check_collection_name(collection, "--collection")
    check_database(db, "--db")
    asked = list(questions) + (read_questions(questions_file, question_field) if questions_file else [])
    if not asked:
        raise TunelabError("give a question, or --questions FILE")
    from tunelab.inference.rag.retriever import Retriever

    retriever = Retriever(db, collection, top_k=top_k, flag="--db")  # the embedding model loads once
    for question, hits in zip(asked, retriever.search(asked), strict=True):
        if as_json:
            print(json.dumps({"question": question, "results": [hit.as_json() for hit in hits]},
                             ensure_ascii=False))
        else:
            _show(question, hits)


def _show(question: str, hits: list[Hit]) -> None:
    stdout.print(f"[bold]{question}[/bold]", highlight=False)
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit.text.split())
        text = text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + " ..."
        stdout.print(f"  {rank}. distance {hit.distance:.3f}  {hit.where()}", highlight=False, markup=False)
        stdout.print(f"     {text}", highlight=False, markup=False)
    if not hits:
        stdout.print("  (the collection is empty)", highlight=False)
