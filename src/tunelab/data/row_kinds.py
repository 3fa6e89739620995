"""The row kinds: every kind of canonical row a stage trains on, described once with everything the rest of
tunelab asks about it.

A dataset's records become canonical rows of one kind (the formats in ``formats/`` detect and convert them);
a stage names the kind it trains on. Per kind this table holds its fields, how messages name its data, the
dataset_info.json columns that mark it, its encoder (rows into training samples, through the same loss masks
everywhere), the model inputs of a sample, what ``tunelab data inspect`` shows, the sequence length that
``train --dry-run`` sizes memory by, and the collator its trainers batch with. The pipeline, inspect, the dry
run, format detection and the stages read it; adding a row kind is one entry here and its functions.

The encoders (and numpy under them) are imported inside the functions: the command line reads the kinds' names
for its help on every start, and must not pay for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.data.masking import Encoded

Row = dict[str, Any]
Sample = tuple["Encoded", ...]  # the encodings of one training sample (a pair: chosen and rejected)


@dataclass(frozen=True)
class RowKind:
    name: str
    title: str  # how messages name its data: "these records look like {title} data"
    fields: str  # the canonical row (TRL's standard dataset types)
    # rows, tokenizer, loss policy, cutoff_len (None: no cut) -> per row its training samples (the rows' texts are
    # tokenized together)
    encode_rows: Callable[[list[Row], Any, str, int | None], list[list[Sample]]]
    # a sample's encodings and its row -> the model inputs the trainer reads (None: trains online on prompts)
    inputs: Callable[[Sample, Row], dict[str, Any]] | None
    view: Callable[[Sample, Row], dict[str, Any]]  # what `data inspect` shows of a sample beyond its tokens
    sequence: str  # what one training sequence is, in the words of --dry-run
    mapping_columns: tuple[str, ...] = ()  # dataset_info.json "columns" keys that mark data of this kind
    # records given to a stage of another kind are named as the fitting kind of lowest precedence (the most specific);
    # None: never named so (any record with a prompt would fit RL)
    precedence: int | None = None
    # "module:Class"(pad_token_id) that batches its samples as encoded, keeping tunelab's loss masks, for the trainers
    # that take them so (dpo, kto); None: the trainer's own collator (sft, pt; rm re-shapes pairs first)
    collator: str | None = None

    def collator_class(self) -> Any:
        if self.collator is None:
            raise ValueError(f"{self.name} rows are batched by their trainer's own collator")
        module, name = self.collator.split(":")
        return getattr(importlib.import_module(module), name)

    def encode(self, row: Row, tokenizer: Any, policy: str, cutoff_len: int | None) -> list[Sample]:
        """One row's training samples."""
        return self.encode_rows([row], tokenizer, policy, cutoff_len)[0]

    def lengths(self, sample: Sample) -> int:
        """Tokens of the sample's sequence: a pair is as long as its longer side."""
        return max(len(item.input_ids) for item in sample)


def _sft(rows: list[Row], tokenizer: Any, policy: str, cutoff_len: int | None) -> list[list[Sample]]:
    from tunelab.data.encoders import encode_sft_rows

    return [[(item,) for item in encoded] for encoded in encode_sft_rows(rows, tokenizer, policy, cutoff_len)]


def _pt(rows: list[Row], tokenizer: Any, policy: str, cutoff_len: int | None) -> list[list[Sample]]:
    from tunelab.data.encoders import encode_pt_rows

    return [[(chunk,) for chunk in chunks] for chunks in encode_pt_rows(rows, tokenizer, cutoff_len)]


def _pair(rows: list[Row], tokenizer: Any, policy: str, cutoff_len: int | None) -> list[list[Sample]]:
    from tunelab.data.encoders import encode_pair_rows

    return [[pair] for pair in encode_pair_rows(rows, tokenizer, cutoff_len)]


def _labelled(rows: list[Row], tokenizer: Any, policy: str, cutoff_len: int | None) -> list[list[Sample]]:
    from tunelab.data.encoders import encode_kto_rows

    return [[(encoded,)] for encoded in encode_kto_rows(rows, tokenizer, cutoff_len)]


def _prompt(rows: list[Row], tokenizer: Any, policy: str, cutoff_len: int | None) -> list[list[Sample]]:
    from tunelab.data.encoders import encode_prompt

    return [[(encode_prompt(row, tokenizer),)] for row in rows]


def _token_inputs(sample: Sample, row: Row) -> dict[str, Any]:
    if row.get("images"):  # the collator opens them (training/collate.py: ImageCollator)
        return {"input_ids": sample[0].input_ids, "labels": sample[0].labels, "image_files": list(row["images"])}
    return {"input_ids": sample[0].input_ids, "labels": sample[0].labels}


def _pair_inputs(sample: Sample, row: Row) -> dict[str, Any]:
    from tunelab.data.encoders import pair_sample

    if row.get("images"):  # the prompt's images, for ImagePairCollator
        return {**pair_sample(*sample), "image_files": list(row["images"])}
    return pair_sample(*sample)


def _labelled_inputs(sample: Sample, row: Row) -> dict[str, Any]:
    from tunelab.data.encoders import completion_sample

    return {**completion_sample(sample[0]), "label": bool(row["label"])}


def _segments(sample: Sample, row: Row) -> dict[str, Any]:
    from tunelab.data.masking import segments

    return {"segments": segments(sample[0])}


def _pair_view(sample: Sample, row: Row) -> dict[str, Any]:
    from tunelab.data.masking import segments

    return {"segments": segments(sample[0]), "rejected_segments": segments(sample[1])}


def _labelled_view(sample: Sample, row: Row) -> dict[str, Any]:
    return {**_segments(sample, row), "label": row["label"]}


def _prompt_view(sample: Sample, row: Row) -> dict[str, Any]:
    return {"segments": [{"text": sample[0].text, "trained": False}],
            "extra": {key: value for key, value in row.items() if key not in ("prompt", "tools")}}


ROW_KIND_TABLE: dict[str, RowKind] = {kind.name: kind for kind in (
    RowKind("sft", "supervised (instruction/answer)", '{"messages": [...], "tools": list | None}', _sft,
            _token_inputs, _segments, "prompt + answers", precedence=2),
    RowKind("pt", "plain text (pretraining)", '{"text": str}', _pt, _token_inputs, _segments, "text chunk",
            precedence=3),
    RowKind("preference", "preference", '{"prompt": [...], "chosen": [...], "rejected": [...]} (+ "tools")',
            _pair, _pair_inputs, _pair_view, "prompt + the longer answer", mapping_columns=("chosen", "rejected"),
            precedence=0, collator="tunelab.training.collate:PairCollator"),
    RowKind("kto", "KTO (labelled answers)", '{"prompt": [...], "completion": [...], "label": bool} (+ "tools")',
            _labelled, _labelled_inputs, _labelled_view, "prompt + answer", mapping_columns=("kto_tag",),
            precedence=1, collator="tunelab.training.collate:UnpairedCollator"),
    RowKind("rl", "RL prompt", '{"prompt": [...], **every other column of the record, unchanged}', _prompt, None,
            _prompt_view, "prompt + max_completion_length"),
)}
ROW_KINDS = tuple(ROW_KIND_TABLE)


def row_kind(name: str) -> RowKind:
    return ROW_KIND_TABLE[name]


def kind_of(name: str) -> str:
    """The row kind of a stage name, or a row kind itself (for data of stages not in this version)."""
    from tunelab.stage_registry import stage_kinds

    kinds = stage_kinds()
    if name in kinds:
        return kinds[name]
    if name in ROW_KIND_TABLE:
        return name
    raise TunelabError(f"--stage '{name}' is neither a stage ({', '.join(kinds)}) nor a row kind "
                       f"({', '.join(ROW_KINDS)})")


def stages_of_kind(kind: str) -> list[str]:
    from tunelab.stage_registry import stage_kinds

    return [name for name, stage_kind in stage_kinds().items() if stage_kind == kind]
