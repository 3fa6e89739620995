"""Where each token lies in the text, from the token ids alone, for BPE tokenizers whose tokens are pieces of it.

Two kinds of tokenizer cut the text into tokens in order and without gaps, so the tokens' byte lengths give their
places:

* byte-level BPE without a normalizer (GPT-2, Llama 3, Qwen, ...): a token is its bytes, one character per byte;
* SentencePiece-style BPE with a ``Metaspace`` pre-tokenizer (Llama 2, Mistral, TinyLlama, stories260K): a token is
  text with spaces written as "▁", or one byte (``<0x0A>``) where byte fallback is on. The "▁" that the
  pre-tokenizer puts before the text's start belongs to no byte of the text.

Tokenizing without character offsets (``encode_batch_fast``) then saves a fifth to a third of the tokenizer's time,
the largest part of preparing a dataset. Every text is checked: its tokens must add up to exactly its bytes,
otherwise the caller asks for offsets.
"""

from __future__ import annotations

import re
import weakref
from itertools import accumulate
from typing import Any

from tokenizers import models, pre_tokenizers

_ALPHABET = frozenset(pre_tokenizers.ByteLevel.alphabet())  # one character per byte value
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # SentencePiece's byte fallback
_UNKNOWN = -1  # a token whose bytes are not known (unknown token, not a piece of text): its text needs offsets


class TokenBytes:
    """Byte lengths of a tokenizer's tokens, looked up as ids are met (a vocabulary has up to 150k)."""

    def __init__(self, backend: Any, space_mark: str | None = None):
        """``space_mark``: the Metaspace character that stands for a space (None for a byte-level tokenizer)."""
        self._backend = weakref.ref(backend)  # the table lives as long as its tokenizer, not longer
        self._space_mark = space_mark
        self._byte_fallback = bool(getattr(backend.model, "byte_fallback", False))
        self._added = {index: len(token.content.encode("utf-8"))
                       for index, token in backend.get_added_tokens_decoder().items()}
        self._lengths: list[int | None] = [None] * backend.get_vocab_size(with_added_tokens=True)
        unknown_token = backend.model.unk_token
        unknown = backend.token_to_id(unknown_token) if unknown_token else None
        if unknown is not None and unknown < len(self._lengths):  # it stands for text of any length
            self._lengths[unknown] = _UNKNOWN

    def bounds(self, ids: list[int], text: str) -> list[int] | None:
        """``[0, end of token 0, end of token 1, ...]`` in the bytes of ``text``, the text ``ids`` encode; None
        where the tokens do not add up to exactly its bytes."""
        lengths = self._lengths
        try:
            sizes = [lengths[index] or self._learn(index) for index in ids]
        except IndexError:  # an id beyond the vocabulary this table was made for
            return None
        if _UNKNOWN in sizes or (self._space_mark is not None and self._space_mark in text):
            return None  # a mark written in the text is its own bytes, not a space's
        ends = list(accumulate(sizes, initial=0))
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if ends[-1] == size:
            return ends
        if ends[-1] == size + 1 and self._marked_start(ids, text):
            return [0, *(end - 1 for end in ends[1:])]
        return None

    def _marked_start(self, ids: list[int], text: str) -> bool:
        """Whether the one byte too many is the "▁" a Metaspace pre-tokenizer put before the text: the first token
        is a piece of text that starts with it, and the text does not start with a space. Where that "▁" is a token
        alone, it then has no bytes (its offsets are the first character's)."""
        mark = self._space_mark
        return (mark is not None and not text.startswith(" ") and ids[0] not in self._added
                and self._backend().id_to_token(ids[0]).startswith(mark))

    def _learn(self, index: int) -> int:
        if index in self._added:
            size = self._added[index]
        else:
            size = self._piece_size(self._backend().id_to_token(index))
        self._lengths[index] = size
        return size

    def _piece_size(self, piece: str | None) -> int:
        if not piece:
            return _UNKNOWN
        if self._space_mark is None:
            return len(piece) if _ALPHABET.issuperset(piece) else _UNKNOWN
        if self._byte_fallback and _BYTE_PIECE.fullmatch(piece):
            return 1
        return len(piece.replace(self._space_mark, " ").encode("utf-8"))


def byte_level(backend: Any) -> bool:
    """Whether the tokenizer cuts the text's bytes into tokens as they are: a byte-level pre-tokenizer that adds no
    leading space, after nothing that changes the text (no normalizer)."""
    if not _plain_bpe(backend):
        return False
    pre = backend.pre_tokenizer
    steps = _steps(pre) if isinstance(pre, pre_tokenizers.Sequence) else [pre]
    levels = [step for step in steps if isinstance(step, pre_tokenizers.ByteLevel)]
    others_split_only = all(isinstance(step, (pre_tokenizers.ByteLevel, pre_tokenizers.Split, pre_tokenizers.Digits,
                                              pre_tokenizers.Punctuation)) for step in steps)
    return len(levels) == 1 and not levels[0].add_prefix_space and others_split_only


def metaspace_mark(backend: Any) -> str | None:
    """The character a Metaspace pre-tokenizer writes for a space, where it is the only step before a plain BPE
    model (no normalizer); None otherwise.

    The "▁" put before the text makes its tokens one byte longer than it, so a token one byte shorter than its text
    would go unseen: refused are added tokens that take the spaces beside them (``lstrip``, ``rstrip``), and a
    model that drops characters outside its vocabulary (neither byte fallback nor an unknown token)."""
    pre, model = backend.pre_tokenizer, backend.model
    if not _plain_bpe(backend) or not isinstance(pre, pre_tokenizers.Metaspace):
        return None
    if any(token.lstrip or token.rstrip for token in backend.get_added_tokens_decoder().values()):
        return None
    if not getattr(model, "byte_fallback", False) and not model.unk_token:
        return None
    return pre.replacement if len(pre.replacement) == 1 and pre.replacement != " " else None


def _plain_bpe(backend: Any) -> bool:
    """A BPE model whose tokens are the text's pieces as they are: no normalizer, no "##" or "</w>" markers."""
    model = backend.model
    return (backend.normalizer is None and isinstance(model, models.BPE) and not model.continuing_subword_prefix
            and not model.end_of_word_suffix)


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
    """The byte lengths of a transformers tokenizer's tokens, or None where its tokens are not pieces of the text
    (then labels come from character offsets). One table per Rust tokenizer, made again when its vocabulary size,
    model, normalizer or pre-tokenizer changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    model = backend.model  # its kind and the settings that decide a piece's bytes; str(model) writes out the vocabulary
    state = (backend.get_vocab_size(with_added_tokens=True), str(backend.normalizer), str(backend.pre_tokenizer),
             type(model), getattr(model, "unk_token", None), getattr(model, "byte_fallback", None))
    known = _tables.get(backend)
    if known is None or known[0] != state:
        known = _tables[backend] = (state, _table(backend))
    return known[1]


def _table(backend: Any) -> TokenBytes | None:
    if byte_level(backend):
        return TokenBytes(backend)
    mark = metaspace_mark(backend)
    return TokenBytes(backend, space_mark=mark) if mark is not None else None
