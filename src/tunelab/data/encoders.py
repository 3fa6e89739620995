"""One encoder per row kind: canonical rows into token ids and the tokens that carry loss.

Training (``pipeline.py``) and ``tunelab data inspect`` both call these, so what inspect shows is what
trains. Every conversation goes through ``masking.encode_conversation``: for a preference pair, chosen and
rejected are each rendered after the shared prompt, and only their assistant content plus the template's
end marker carries loss (the prompt is context).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.data.masking import IGNORE_INDEX, Conversation, Encoded, encode_conversations, encode_texts
from tunelab.data.templates import render

# Each encoder takes many rows: their texts go to the tokenizer together (the hot path of preparing data).


def _in_order(rows: list[dict], text_rows: Callable[[list[dict]], list], image_row: Callable[[dict], Any]) -> list:
    """Per row, in order: rows without images encoded together, each row with images on its own."""
    encoded = iter(text_rows([row for row in rows if not row.get("images")]))
    return [image_row(row) if row.get("images") else next(encoded) for row in rows]


def encode_sft_rows(rows: list[dict], tokenizer: Any, policy: str = "assistant",
                    cutoff_len: int | None = None) -> list[list[Encoded]]:
    """Per row its samples (one conversation)."""
    from tunelab.data.image_samples import encode_with_images

    def text_rows(plain: list[dict]) -> list[list[Encoded]]:
        conversations = [Conversation(row["messages"], row.get("tools"), policy) for row in plain]
        return [[encoded] for encoded in encode_conversations(tokenizer, conversations, cutoff_len)]

    return _in_order(rows, text_rows, lambda row: [encode_with_images(tokenizer, row, policy, cutoff_len)])


def encode_pt_rows(rows: list[dict], tokenizer: Any, cutoff_len: int | None = None) -> list[list[Encoded]]:
    """Per row its chunks of at most cutoff_len tokens."""
    return encode_texts(tokenizer, [row["text"] for row in rows], cutoff_len or 10**9)


def encode_pair_rows(rows: list[dict], tokenizer: Any, cutoff_len: int | None = None) -> list[tuple[Encoded, Encoded]]:
    """Per row (chosen, rejected), each the prompt plus that answer, trained only on the answer."""
    from tunelab.data.image_samples import encode_image_pair

    def text_rows(plain: list[dict]) -> list[tuple[Encoded, Encoded]]:
        conversations = [Conversation(row["prompt"] + row[side], row.get("tools"), train_from=len(row["prompt"]))
                         for row in plain for side in ("chosen", "rejected")]
        encoded = iter(encode_conversations(tokenizer, conversations, cutoff_len))
        return list(zip(encoded, encoded, strict=True))

    return _in_order(rows, text_rows, lambda row: encode_image_pair(tokenizer, row, cutoff_len))


def encode_kto_rows(rows: list[dict], tokenizer: Any, cutoff_len: int | None = None) -> list[Encoded]:
    """Per row the prompt plus its labelled answer, trained only on the answer."""
    conversations = [Conversation(row["prompt"] + row["completion"], row.get("tools"), train_from=len(row["prompt"]))
                     for row in rows]
    return encode_conversations(tokenizer, conversations, cutoff_len)


def encode_sft(row: dict, tokenizer: Any, policy: str = "assistant", cutoff_len: int | None = None) -> list[Encoded]:
    return encode_sft_rows([row], tokenizer, policy, cutoff_len)[0]


def encode_pt(row: dict, tokenizer: Any, cutoff_len: int | None = None) -> list[Encoded]:
    return encode_pt_rows([row], tokenizer, cutoff_len)[0]


def encode_pair(row: dict, tokenizer: Any, cutoff_len: int | None = None) -> tuple[Encoded, Encoded]:
    return encode_pair_rows([row], tokenizer, cutoff_len)[0]


def encode_kto(row: dict, tokenizer: Any, cutoff_len: int | None = None) -> Encoded:
    return encode_kto_rows([row], tokenizer, cutoff_len)[0]


def encode_prompt(row: dict, tokenizer: Any) -> Encoded:
    """An RL prompt with the generation prompt appended: all context, nothing trained."""
    text = render(tokenizer, row["prompt"], row.get("tools"), add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Encoded(ids, [IGNORE_INDEX] * len(ids), text)


def _first_trained(encoded: Encoded) -> int:
    return next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)


def _last_trained(encoded: Encoded) -> int:
    return len(encoded.labels) - next(i for i, label in enumerate(reversed(encoded.labels)) if label != IGNORE_INDEX)


def scored_sequence(encoded: Encoded) -> list[int]:
    """The ids a reward model scores: the conversation up to the answer's end marker (its last trained token)."""
    return encoded.input_ids[:_last_trained(encoded)]


def completion_sample(encoded: Encoded) -> dict[str, list[int]]:
    """An unpaired (KTO) sample: ``prompt_ids`` up to the answer, the answer's ids and loss mask up to its end
    marker."""
    start, end = _first_trained(encoded), _last_trained(encoded)
    return {"prompt_ids": encoded.input_ids[:start], "completion_ids": encoded.input_ids[start:end],
            "completion_mask": [int(label != IGNORE_INDEX) for label in encoded.labels[start:end]]}


def pair_sample(chosen: Encoded, rejected: Encoded) -> dict[str, list[int]]:
    """The layout TRL's preference trainers read: a shared ``prompt_ids`` and per answer its ids and loss
    mask, cut after the answer's last trained token (the end marker) so nothing after it is scored."""
    shared = 0
    limit = min(_first_trained(chosen), _first_trained(rejected))
    while shared < limit and chosen.input_ids[shared] == rejected.input_ids[shared]:
        shared += 1
    sample: dict[str, list[int]] = {"prompt_ids": chosen.input_ids[:shared]}
    for name, encoded in (("chosen", chosen), ("rejected", rejected)):
        end = _last_trained(encoded)
        sample[f"{name}_ids"] = encoded.input_ids[shared:end]
        sample[f"{name}_mask"] = [int(label != IGNORE_INDEX) for label in encoded.labels[shared:end]]
    return sample
