"""Which tokens carry loss: decided once, from the rendered conversation and a policy.

Works for any chat template, with or without ``{% generation %}`` markers: each assistant turn is
located in the rendered text by rendering the conversation up to it (with and without the
generation prompt; a final reply that occurs once in the text needs neither), the trained characters
are the turn's content plus the template's end marker (e.g. ``<|im_end|>``, ``<|eot_id|>``, ``</s>``),
and tokens are mapped to characters through their bytes (byte-level and Metaspace BPE, ``token_bytes.py``) or the
tokenizer's offsets. Tokenization is therefore identical to what the model sees at inference.

Policies: ``assistant`` (every assistant turn), ``last`` (last assistant turn only), ``all``.
"""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from tunelab.data.templates import render
from tunelab.data.token_bytes import TokenBytes, token_bytes

IGNORE_INDEX = -100
POLICIES = ("assistant", "last", "all")


class MaskingError(ValueError):
    """The template does not render an assistant turn in a way that can be located."""


def _no_offsets() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.int64)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    text: str
    truncated: bool = False
    full_length: int = 0  # tokens before truncation
    # Character offsets are read only by inspection; making them per token for every training sample cost
    # more than the tokenizer itself (a Python list per token, and the garbage collector walking them).
    offsets_of: Callable[[], np.ndarray] = field(default=_no_offsets, repr=False, compare=False)
    dropped: str | None = None  # why the sample cannot train at all (cutoff_len through an image's tokens)
    image_tokens: list[int] = field(default_factory=list)  # tokens per image, in order (vision-language rows)

    @property
    def offsets(self) -> np.ndarray:
        """(start, end) character offsets in ``text`` per token, shape ``[tokens, 2]``."""
        return self.offsets_of()

    @property
    def num_trained(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


def _common_prefix_length(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def trained_char_spans(tokenizer: Any, messages: list[dict], tools: list | None, policy: str = "assistant",
                       train_from: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of it that carry loss.

    ``train_from`` excludes assistant turns before that message index (a preference or KTO prompt's
    own history is context, not a target).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown loss policy '{policy}'; expected one of {POLICIES}")
    text = render(tokenizer, messages, tools)
    if policy == "all":
        return text, [(0, len(text))]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    targets = [i for i in turns if i >= train_from]
    selected = set(targets[-1:] if policy == "last" else targets)
    spans, cursor = [], 0
    for index in turns:
        start, end, marked = _locate_turn(tokenizer, messages, tools, index, text, cursor)
        if not marked:
            text, end = _stop_without_marker(tokenizer, text, end)
        cursor = end
        if index in selected:
            spans.append((start, end))
    return text, spans


def _stop_without_marker(tokenizer: Any, text: str, end: int) -> tuple[str, int]:
    """Templates that close no assistant turn (ChatGLM/GLM-4: the model stops by emitting the next header
    such as ``<|user|>``): train that special token, or, after the final turn, an appended eos, so that
    the model still learns to stop."""
    rest = text[end:]
    if not rest.strip():
        eos = tokenizer.eos_token or ""
        return text[:end] + eos + rest, end + len(eos)
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    following = next((token for token in sorted(special, key=len, reverse=True) if rest.startswith(token)), "")
    return text, end + len(following)


def _locate_turn(tokenizer: Any, messages: list[dict], tools: list | None, index: int, text: str,
                 cursor: int) -> tuple[int, int, bool]:
    """Character span of assistant turn ``index`` in ``text``: content (or tool call) plus end marker,
    and whether the template wrote an end marker at all.

    The turn starts where the generation prompt for it ends (or, for templates that re-render
    history, e.g. Qwen3 dropping earlier reasoning, where the text and that prompt stop agreeing);
    within the turn, training starts at the content. The end marker is what rendering the
    conversation up to this turn writes after the content, as far as the full text agrees with it
    (a template that appends eos only after the final message must not hide earlier markers). For
    the final turn that is the rest of the text, so it needs no render when ``_sole_final_reply`` finds it.
    """
    content = (messages[index].get("content") or "").strip()
    if index == len(messages) - 1 and (start := _sole_final_reply(text, messages, content, cursor)) is not None:
        content_end = start + len(content)
        marker = _end_marker(text[content_end:], text, content_end)
        return start, content_end + len(marker), bool(marker)
    prompt = render(tokenizer, messages[:index], tools, add_generation_prompt=True)
    upto = text if index == len(messages) - 1 else render(tokenizer, messages[: index + 1], tools)
    turn_start = max(cursor, len(prompt) if text.startswith(prompt) else _common_prefix_length(text, prompt))
    if content:
        start = text.find(content, turn_start)
        at = upto.rfind(content)
        if start < 0 or at < 0:
            raise MaskingError(f"the chat template does not render assistant turn {index} verbatim; "
                               "its loss mask cannot be determined")
        content_end, after = start + len(content), upto[at + len(content):]
    elif text.startswith(prompt) and upto.startswith(prompt):  # a tool call with no text
        start = content_end = turn_start
        after = upto[len(prompt):]
    else:
        raise MaskingError(f"cannot locate assistant turn {index} (no text content) in the rendered template")
    marker = _end_marker(after, text, content_end)
    return start, content_end + len(marker), bool(marker)


def _sole_final_reply(text: str, messages: list[dict], content: str, cursor: int) -> int | None:
    """Where the final reply's content starts, found without rendering the prompt: when it occurs in ``text``
    (after ``cursor``) exactly once, after the previous message's content, it is where the prompt's render would
    have located it. None otherwise (then the prompt is rendered). This halves the renders of single-turn data."""
    start = text.find(content, cursor) if content else -1
    if start < 0 or text.find(content, start + 1) >= 0 or len(messages) < 2:
        return None
    before = messages[-2].get("content")
    if not isinstance(before, str) or not before.strip() or text.rfind(before.strip(), 0, start) < 0:
        return None
    return start


def _end_marker(after: str, text: str, position: int) -> str:
    """The longest whitespace-delimited prefix of ``after`` that ``text`` also has at ``position``."""
    cuts = [i for i in range(1, len(after)) if after[i].isspace() and not after[i - 1].isspace()]
    for candidate in sorted({after[:i] for i in cuts} | {after.rstrip()}, key=len, reverse=True):
        if candidate and text.startswith(candidate, position):
            return candidate
    return ""


def _token_flags(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Whether each token overlaps a trained span (a token of zero width counts where it sits)."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    flags = np.zeros(len(offsets), dtype=bool)
    for span_start, span_end in spans:
        overlaps = (starts < span_end) & (ends > span_start)
        inside = (ends == starts) & (starts >= span_start) & (starts < span_end)
        flags |= overlaps | inside
    return flags


def _offset_array(offsets: list[tuple[int, int]]) -> np.ndarray:
    return np.asarray(offsets, dtype=np.int64).reshape(-1, 2)


def _in_span(offset: tuple[int, int] | None, start: int, end: int) -> bool:
    """``_token_flags`` for one token."""
    if offset is None:
        return False
    token_start, token_end = offset
    return (token_start < end and token_end > start) or (token_start == token_end and start <= token_start < end)


def _span_tokens(encoding: Any, start: int, end: int) -> tuple[int, int] | None:
    """The tokens ``[first, last)`` that ``_token_flags`` marks for the span, found from the Rust encoding's
    character lookup and widened over neighbours that share characters (byte-level pieces of one character);
    None where no character of the span lies in a token (the caller then compares every token)."""
    first = next((token for char in range(start, end) if (token := encoding.char_to_token(char)) is not None), None)
    if first is None:
        return None
    last = next(token for char in range(end - 1, start - 1, -1) if (token := encoding.char_to_token(char)) is not None)
    while first > 0 and _in_span(encoding.token_to_chars(first - 1), start, end):
        first -= 1
    while last + 1 < len(encoding) and _in_span(encoding.token_to_chars(last + 1), start, end):
        last += 1
    return first, last + 1


def _labels(text: str, ids: list[int], spans: list[tuple[int, int]], encoding_of: Callable[[], Any],
            table: TokenBytes | None) -> list[int]:
    """Ids where trained, ``IGNORE_INDEX`` elsewhere: from the tokens' bytes where they decide, else from the
    encoding's character offsets."""
    labels = _byte_labels(text, ids, spans, table) if table is not None else None
    return labels if labels is not None else _offset_labels(encoding_of(), ids, spans)


def _byte_labels(text: str, ids: list[int], spans: list[tuple[int, int]], table: TokenBytes) -> list[int] | None:
    """``_offset_labels`` from the tokens' byte lengths; None where they do not tile the text's bytes, or where a
    span starts or ends on whitespace (a byte-level tokenizer's offsets leave a token's edge spaces out, so only the
    offsets tell whether such a token overlaps). Trained spans start at a reply's text and end at its end marker."""
    bounds = table.bounds(ids, text)
    if bounds is None:
        return None
    plain = text.isascii()
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        if start >= end:
            continue
        if text[start].isspace() or text[end - 1].isspace():
            return None
        if not plain:
            start, end = len(text[:start].encode("utf-8")), len(text[:end].encode("utf-8"))
        # from the text's start, a first token without bytes (a Metaspace "▁" alone) overlaps too
        first, last = bisect_right(bounds, start) - 1 if start else 0, bisect_left(bounds, end)
        labels[first:last] = ids[first:last]
    return labels


def _offset_labels(encoding: Any, ids: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """Labels from the encoding's character offsets. Offsets of a tokenization only grow along the text, so each
    span's tokens are one run, found without building per-token offsets."""
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        run = _span_tokens(encoding, start, end) if start < end else (0, 0)
        if run is None:
            return np.where(_token_flags(_offset_array(encoding.offsets), spans), ids, IGNORE_INDEX).tolist()
        labels[run[0]:run[1]] = ids[run[0]:run[1]]
    return labels


class _SlowEncoding:
    """The Rust encoding's lookups for a tokenizer without a Rust backend (from its offset mapping)."""

    def __init__(self, offsets: list[tuple[int, int]]):
        self.offsets = [tuple(offset) for offset in offsets]

    def __len__(self) -> int:
        return len(self.offsets)

    def char_to_token(self, char: int) -> int | None:
        return next((i for i, (start, end) in enumerate(self.offsets) if start <= char < end), None)

    def token_to_chars(self, token: int) -> tuple[int, int]:
        return self.offsets[token]


Tokenized = tuple[list[int], Callable[[], Any]]  # the ids, and the encoding that maps them to characters


def _tokenize(tokenizer: Any, texts: list[str]) -> list[Tokenized]:
    """Ids per text, and a call that gives its encoding with character offsets (made then, where the tokens'
    bytes stand in for the offsets). With a Rust tokenizer (the hot path) the texts go in one batch: the same tokens
    as one by one, computed on every core, outside the GIL."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        encoded = [tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) for text in texts]
        return [(list(item["input_ids"]), _ready(_SlowEncoding(item["offset_mapping"]))) for item in encoded]
    if token_bytes(tokenizer) is not None:
        fast = backend.encode_batch_fast(texts, add_special_tokens=False)
        return [(encoding.ids, partial(backend.encode, text, add_special_tokens=False))
                for text, encoding in zip(texts, fast, strict=True)]
    if len(texts) == 1:
        encoding = backend.encode(texts[0], add_special_tokens=False)
        return [(encoding.ids, _ready(encoding))]
    return [(encoding.ids, _ready(encoding)) for encoding in backend.encode_batch(texts, add_special_tokens=False)]


def _ready(encoding: Any) -> Callable[[], Any]:
    return lambda: encoding


def _offsets_reader(encoding_of: Callable[[], Any], first: int, count: int) -> Callable[[], np.ndarray]:
    return lambda: _offset_array(encoding_of().offsets[first:first + count])


@dataclass(frozen=True)
class Conversation:
    """What ``encode_conversations`` encodes: messages, tools, the loss policy and the first trained turn."""

    messages: list[dict]
    tools: list | None = None
    policy: str = "assistant"
    train_from: int = 0


def encode_conversation(tokenizer: Any, messages: list[dict], tools: list | None = None,
                        policy: str = "assistant", cutoff_len: int | None = None, train_from: int = 0) -> Encoded:
    """Token ids and labels (``-100`` where no loss) for one conversation, truncated to ``cutoff_len``."""
    return encode_conversations(tokenizer, [Conversation(messages, tools, policy, train_from)], cutoff_len)[0]


def encode_conversations(tokenizer: Any, conversations: list[Conversation],
                         cutoff_len: int | None = None) -> list[Encoded]:
    """``encode_conversation`` for many: rendered one by one, tokenized together."""
    planned = [trained_char_spans(tokenizer, item.messages, item.tools, item.policy, item.train_from)
               for item in conversations]
    tokenized = _tokenize(tokenizer, [text for text, _spans in planned])
    table = token_bytes(tokenizer)
    return [_encoded(text, ids, _labels(text, ids, spans, encoding_of, table), encoding_of, cutoff_len)
            for (text, spans), (ids, encoding_of) in zip(planned, tokenized, strict=True)]


def _encoded(text: str, ids: list[int], labels: list[int], encoding_of: Callable[[], Any],
             cutoff_len: int | None) -> Encoded:
    full_length = len(ids)
    truncated = cutoff_len is not None and full_length > cutoff_len
    if truncated:
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    return Encoded(ids, labels, text, truncated, full_length, _offsets_reader(encoding_of, 0, len(ids)))


def encode_text(tokenizer: Any, text: str, cutoff_len: int) -> list[Encoded]:
    """Pretraining text: bos + text + eos, every token trained, cut into cutoff_len chunks (nothing lost)."""
    return encode_texts(tokenizer, [text], cutoff_len)[0]


def encode_texts(tokenizer: Any, texts: list[str], cutoff_len: int) -> list[list[Encoded]]:
    """``encode_text`` for many, tokenized together."""
    bos = tokenizer.bos_token if tokenizer.bos_token and tokenizer.bos_token != tokenizer.eos_token else ""
    full = [f"{bos}{text}{tokenizer.eos_token or ''}" for text in texts]
    return [_text_chunks(text, ids, encoding_of, cutoff_len)
            for text, (ids, encoding_of) in zip(full, _tokenize(tokenizer, full), strict=True)]


def _text_chunks(text: str, ids: list[int], encoding_of: Callable[[], Any], cutoff_len: int) -> list[Encoded]:
    chunks = []
    for start in range(0, len(ids), cutoff_len):
        chunk = ids[start:start + cutoff_len]
        if len(chunk) > 1:
            chunks.append(Encoded(chunk, list(chunk), text, offsets_of=_offsets_reader(encoding_of, start, len(chunk))))
    return chunks


def segments(encoded: Encoded) -> list[dict[str, Any]]:
    """The rendered text split into runs of trained / untrained characters (concatenates to the text)."""
    text = encoded.text
    trained = [False] * len(text)
    for (start, end), label in zip(encoded.offsets, encoded.labels, strict=True):
        if label != IGNORE_INDEX:
            trained[start:end] = [True] * (end - start)
    runs: list[dict[str, Any]] = []
    start = 0
    for position in range(1, len(text) + 1):
        if position == len(text) or trained[position] != trained[start]:
            runs.append({"text": text[start:position], "trained": trained[start]})
            start = position
    return runs
