"""One encoder per row kind: canonical rows into token ids and the tokens that carry loss.

Training (``pipeline.py``) and ``tunelab data inspect`` both call these, so what inspect shows is what
trains. Every conversation goes through ``masking.encode_conversation``: for a preference pair, chosen and
rejected are each rendered after the shared prompt, and only their assistant content plus the template's
end marker carries loss (the prompt is context).
"""

from __future__ import annotations

from typing import Any

from tunelab.data.masking import IGNORE_INDEX, Encoded, encode_conversation, encode_text
from tunelab.data.templates import render


def encode_sft(row: dict, tokenizer: Any, policy: str = "assistant", cutoff_len: int | None = None) -> list[Encoded]:
    if row.get("images"):
        from tunelab.data.image_samples import encode_with_images

        return [encode_with_images(tokenizer, row, policy, cutoff_len)]
    return [encode_conversation(tokenizer, row["messages"], row.get("tools"), policy, cutoff_len)]


def encode_pt(row: dict, tokenizer: Any, cutoff_len: int | None = None) -> list[Encoded]:
    return encode_text(tokenizer, row["text"], cutoff_len or 10**9)


def encode_pair(row: dict, tokenizer: Any, cutoff_len: int | None = None) -> tuple[Encoded, Encoded]:
    """(chosen, rejected), each the prompt plus that answer, trained only on the answer."""
    if row.get("images"):
        from tunelab.data.image_samples import encode_image_pair

        return encode_image_pair(tokenizer, row, cutoff_len)
    prompt, tools = row["prompt"], row.get("tools")
    return (encode_conversation(tokenizer, prompt + row["chosen"], tools, cutoff_len=cutoff_len,
                                train_from=len(prompt)),
            encode_conversation(tokenizer, prompt + row["rejected"], tools, cutoff_len=cutoff_len,
                                train_from=len(prompt)))


def encode_kto(row: dict, tokenizer: Any, cutoff_len: int | None = None) -> Encoded:
    prompt = row["prompt"]
    return encode_conversation(tokenizer, prompt + row["completion"], row.get("tools"), cutoff_len=cutoff_len,
                               train_from=len(prompt))


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
