"""RAG retrieval quality: hit@1 and hit@5 of held-out questions against the documents that answer them, on real
data nobody here wrote, through tunelab's own path (``index_documents`` into chromadb, ``Retriever.search``).

Run from the repository root::

    .venv/bin/python benchmarks/rag_retrieval.py                         # the bundled all-MiniLM-L6-v2
    .venv/bin/python benchmarks/rag_retrieval.py --embedding-model PATH  # any local sentence-embedding folder
    .venv/bin/python benchmarks/rag_retrieval.py --json

What is measured:

* Each set indexes the answers only; the questions are never indexed, so a question must find its answer by
  meaning. A hit@k is the question's own record among the k nearest chunks.
  - ``alpaca_docs``: ``examples/data/alpaca_docs.jsonl`` (200 Alpaca records): ``instruction`` -> ``output``.
  - ``alpaca_1000``: the first 1000 records of ``tests/fixtures/data/alpaca/alpaca_5000.json`` whose output is
    over 80 characters, the same way.
  - ``medical_title`` / ``medical_ask``: the 1000 records of the Chinese medical dialogues
    (``tests/fixtures/data/medical/medical_sample.csv``, GB18030): the short ``title`` or the patient's whole
    ``ask`` -> the doctor's ``answer``. 42 answers occur twice, so a hit may be lost to a twin.
  - ``belle_seed``: BELLE's 175 Chinese seed tasks: ``instruction`` (+ ``input``) -> the first ``output``.
* ``clue kept``: the share of questions whose own chunk is within the default ``--rag-max-distance``;
  ``no-answer clue``: for ``alpaca_1000``, the share of 500 other Alpaca instructions (whose answers are not
  indexed) that still get a clue within it. Together they say what the default threshold trades.
* Indexing time (reading, chunking, embedding on the CPU, writing) is printed for scale, not compared.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tunelab.inference.rag.index import index_documents  # noqa: E402
from tunelab.inference.rag.retriever import DEFAULT_MAX_DISTANCE, Retriever  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "data"


def _alpaca(count: int, skip: int = 0) -> list[dict]:
    records = json.loads((FIXTURES / "alpaca" / "alpaca_5000.json").read_text(encoding="utf-8"))
    return [r for r in records if len(r["output"]) > 80][skip:skip + count]


def _medical() -> list[dict]:
    text = (FIXTURES / "medical" / "medical_sample.csv").read_text(encoding="gb18030")
    return list(csv.DictReader(io.StringIO(text)))


def _belle() -> list[dict]:
    lines = (FIXTURES / "belle" / "zh_seed_tasks.json").read_text(encoding="utf-8").splitlines()
    tasks = [json.loads(line) for line in lines if line.strip()]
    return [{"question": (t["instruction"] + "\n" + t["instances"][0]["input"]).strip(),
             "answer": t["instances"][0]["output"]} for t in tasks]


def sets() -> dict[str, tuple[list[dict], str, str]]:
    """name -> (records, question field, answer field)."""
    docs = [json.loads(line) for line in (REPO / "examples" / "data" / "alpaca_docs.jsonl").read_text(
        encoding="utf-8").splitlines()]
    medical = _medical()
    return {"alpaca_docs": (docs, "instruction", "output"), "alpaca_1000": (_alpaca(1000), "instruction", "output"),
            "medical_title": (medical, "title", "answer"), "medical_ask": (medical, "ask", "answer"),
            "belle_seed": (_belle(), "question", "answer")}


def measure(name: str, records: list[dict], question: str, answer: str, folder: Path, model: str | None,
            indexes: dict[tuple[int, str], str]) -> dict:
    key = (id(records), answer)
    started = time.perf_counter()
    if key not in indexes:  # medical_title and medical_ask share one index of the answers
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps({answer: r[answer]}, ensure_ascii=False) + "\n" for r in records),
                        encoding="utf-8")
        indexes[key] = str(folder / f"{name}_db")
        index_documents([str(data)], indexes[key], embedding_model=model, fields=[answer])
    seconds = time.perf_counter() - started
    retriever = Retriever(indexes[key], top_k=5)
    found = retriever.search([r[question] for r in records])
    own = [[hit for hit in hits if hit.record == number] for number, hits in enumerate(found, start=1)]
    result = {"set": name, "questions": len(records), "chunks": retriever.collection.count(),
              "hit@1": sum(bool(hits) and hits[0].record == n for n, hits in enumerate(found, start=1))
              / len(records),
              "hit@5": sum(bool(o) for o in own) / len(records),
              "clue kept": sum(bool(o) and o[0].distance <= DEFAULT_MAX_DISTANCE for o in own) / len(records),
              "index s": round(seconds, 1)}
    if name == "alpaca_1000":
        others = retriever.search([r["instruction"] for r in _alpaca(500, skip=1000)], top_k=1)
        result["no-answer clue"] = sum(hits[0].distance <= DEFAULT_MAX_DISTANCE for hits in others) / len(others)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedding-model", default=None, help="local sentence-embedding folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results, indexes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (records, question, answer) in sets().items():
            results.append(measure(name, records, question, answer, Path(tmp), args.embedding_model, indexes))
            print(f"measured {name}", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
        return
    print(f"embedding model: {args.embedding_model or 'bundled all-MiniLM-L6-v2'}; max distance "
          f"{DEFAULT_MAX_DISTANCE}")
    print(f"{'set':<15}{'questions':>10}{'chunks':>8}{'hit@1':>8}{'hit@5':>8}{'clue kept':>11}{'no-answer clue':>16}"
          f"{'index s':>9}")
    for r in results:
        no_answer = f"{r['no-answer clue']:.3f}" if "no-answer clue" in r else "-"
        print(f"{r['set']:<15}{r['questions']:>10}{r['chunks']:>8}{r['hit@1']:>8.3f}{r['hit@5']:>8.3f}"
              f"{r['clue kept']:>11.3f}{no_answer:>16}{r['index s']:>9}")


if __name__ == "__main__":
    main()
