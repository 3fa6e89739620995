"""Where each token lies in the text, from the token ids alone, for byte-level BPE tokenizers.

A byte-level tokenizer (GPT-2, Llama 3, Qwen, ...) without a normalizer cuts the text's UTF-8 bytes into tokens, in
order and without gaps, so the tokens' byte lengths give their places. Tokenizing without character offsets
(``encode_batch_fast``) then saves a fifth of the tokenizer's time, the largest part of preparing a dataset.
Every text is checked: its tokens must add up to exactly its bytes, otherwise the caller asks for offsets.
"""

from __future__ import annotations

import weakref
from itertools import accumulate
from typing import Any

from tokenizers import models, pre_tokenizers

_ALPHABET = frozenset(pre_tokenizers.ByteLevel.alphabet())  # one character per byte value
_UNKNOWN = -1  # a token whose bytes are not known (not a byte-level piece): its text needs offsets


class TokenBytes:
    """Byte lengths of a tokenizer's tokens, looked up as ids are met (a vocabulary has up to 150k)."""

    def __init__(self, backend: Any):
        self._backend = weakref.ref(backend)  # the table lives as long as its tokenizer, not longer
        self._added = {index: len(token.content.encode("utf-8"))
                       for index, token in backend.get_added_tokens_decoder().items()}
        self._lengths: list[int | None] = [None] * backend.get_vocab_size(with_added_tokens=True)

    def bounds(self, ids: list[int]) -> list[int] | None:
        """``[0, end of token 0, end of token 1, ...]`` in bytes, or None where a token's bytes are unknown."""
        lengths = self._lengths
        try:
            sizes = [lengths[index] or self._learn(index) for index in ids]
        except IndexError:  # an id beyond the vocabulary this table was made for
            return None
        return None if _UNKNOWN in sizes else list(accumulate(sizes, initial=0))

    def _learn(self, index: int) -> int:
        if index in self._added:
            size = self._added[index]
        else:
            piece = self._backend().id_to_token(index)
            size = len(piece) if piece and _ALPHABET.issuperset(piece) else _UNKNOWN
        self._lengths[index] = size
        return size


def byte_level(backend: Any) -> bool:
    """Whether the tokenizer cuts the text's bytes into tokens as they are: a byte-level pre-tokenizer that adds no
    leading space, after nothing that changes the text (no normalizer)."""
    if backend.normalizer is not None or not isinstance(backend.model, models.BPE):
        return False
    pre = backend.pre_tokenizer
    steps = _steps(pre) if isinstance(pre, pre_tokenizers.Sequence) else [pre]
    levels = [step for step in steps if isinstance(step, pre_tokenizers.ByteLevel)]
    others_split_only = all(isinstance(step, (pre_tokenizers.ByteLevel, pre_tokenizers.Split, pre_tokenizers.Digits,
                                              pre_tokenizers.Punctuation)) for step in steps)
    return len(levels) == 1 and not levels[0].add_prefix_space and others_split_only


def _steps(sequence: Any) -> list[Any]:
    """The pre-tokenizers of a ``Sequence`` (the bindings index it but give no length)."""
    steps = []
    while True:
        try:
            steps.append(sequence[len(steps)])
        except IndexError:
            return steps


_tables: weakref.WeakKeyDictionary[Any, tuple[tuple, TokenBytes | None]] = weakref.WeakKeyDictionary()


def token_bytes(tokenizer: Any) -> TokenBytes | None:
    """The byte lengths of a transformers tokenizer's tokens, or None where its tokens are not byte pieces of the
    text (then labels come from character offsets). One table per Rust tokenizer, made again when its vocabulary
    size, normalizer or pre-tokenizer changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    state = (backend.get_vocab_size(with_added_tokens=True), str(backend.normalizer), str(backend.pre_tokenizer))
    known = _tables.get(backend)
    if known is None or known[0] != state:
        known = _tables[backend] = (state, TokenBytes(backend) if byte_level(backend) else None)
    return known[1]
