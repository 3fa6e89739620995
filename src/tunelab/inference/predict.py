"""Batch prediction over a dataset: every record's prompt in, one JSON line (prediction, reference) out. No
display here: the commands (``commands/predict.py``), eval and training show progress their own way."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.data.images import with_placeholders
from tunelab.data.registry import SKIP_HINT, load_dataset_rows
from tunelab.errors import DataError, TunelabError
from tunelab.inference.predictor import Predictor


def split_prompt(messages: list[dict]) -> tuple[list[dict], str]:
    """Messages before the last assistant turn (the prompt) and that turn's text (the reference)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "assistant":
            return messages[:index], messages[index].get("content") or ""
    return list(messages), ""


# Columns of a prompt-only (RL-style) record that hold the expected answer, in order of preference.
REFERENCE_COLUMNS = ("answer", "output", "response", "completion", "solution", "target", "summary")


Sample = tuple[list[dict], str, Any]  # (prompt messages, reference, tools)


class Samples(list):
    """The samples of a dataset, with a line per reason records were skipped (--skip-invalid), for the caller
    to show: nothing goes uncounted."""

    skipped: list[str]


def load_samples(dataset: str, dataset_dir: str = "data", max_samples: int | None = None, *,
                 skip_invalid: bool = False, skip_hint: str = SKIP_HINT) -> Samples:
    """(prompt messages, reference, tools) per record. Conversations give their last answer as the
    reference; data without answers (prompts only, e.g. GSM8K questions) is read as prompt rows."""
    options = {"skip_invalid": skip_invalid, "skip_hint": skip_hint}
    try:
        loaded = load_dataset_rows(dataset, dataset_dir, "sft", max_samples, **options)
        samples = Samples((*split_prompt(_with_images(row)), row.get("tools")) for row in loaded.rows)
    except DataError as sft_error:
        try:
            loaded = load_dataset_rows(dataset, dataset_dir, "rl", max_samples, **options)
        except DataError:
            raise sft_error from None
        samples = Samples((row["prompt"], _reference(row), row.get("tools")) for row in loaded.rows)
    samples.skipped = [f"skipped {info['count']} records of {loaded.name}: {reason} (e.g. {info['examples'][0]})"
                       for reason, info in loaded.skipped.as_dict().items()]
    return samples


def _with_images(row: dict[str, Any]) -> list[dict]:
    """The messages, with the row's images (LLaMA-Factory's ``images`` column) as image parts in place of their
    ``<image>`` placeholders."""
    return with_placeholders(row["messages"], row["images"]) if row.get("images") else row["messages"]


def _reference(row: dict[str, Any]) -> str:
    value = next((row[c] for c in REFERENCE_COLUMNS if row.get(c) not in (None, "")), "")
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _last_user_text(messages: list[dict]) -> str:
    content = next((m.get("content") or "" for m in reversed(messages) if m["role"] == "user"), "")
    if isinstance(content, list):  # parts: the text of them (the images are in `messages`)
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content


def write_predictions(predictor: Predictor, samples: list[Sample], output: str | Path, *, batch_size: int = 8,
                      on_batch: Callable[[int], None] | None = None) -> Path:
    """Generate for each sample and write one JSON line each (prompt, messages, prediction, reference; thinking
    of a reasoning template; sources with retrieval);
    ``on_batch(n)`` after each batch of n. Returns the file's path."""
    if batch_size < 1:
        raise TunelabError(f"--batch-size must be at least 1, got {batch_size}")
    path = Path(output)
    if path.is_dir():
        raise TunelabError(f"output '{path}' is a folder; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            answers = predictor.answers_batch([prompt for prompt, _, _ in batch],
                                              tools=[tools for _, _, tools in batch])
            for (prompt, reference, _), answer in zip(batch, answers, strict=True):
                record = {"prompt": _last_user_text(prompt), "messages": prompt, "prediction": answer.text,
                          "reference": reference}
                if answer.thinking is not None:  # a reasoning template: <think> apart, metrics read the answer
                    record["thinking"] = answer.thinking
                if predictor.rag is not None:  # the chunks retrieved into this prompt (none: it went in unchanged)
                    record["sources"] = [hit.as_json() for hit in answer.sources]
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            if on_batch is not None:
                on_batch(len(batch))
    return path
