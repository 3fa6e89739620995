"""Labels from the tokens' bytes: taken for real byte-level tokenizers, refused where the bytes cannot say."""

from __future__ import annotations

from unittest import mock

import pytest
from tokenizers import AddedToken, normalizers, pre_tokenizers

from tunelab.data import masking
from tunelab.data.masking import encode_conversation, encode_conversations
from tunelab.data.registry import load_dataset_rows
from tunelab.data.templates import apply_template
from tunelab.data.token_bytes import token_bytes


@pytest.mark.parametrize("name", ["llama3", "minimind", "stories260K"])
def test_real_rows_take_their_labels_from_token_bytes(load_tokenizer, llamafactory_dir, name: str) -> None:
    """English and Chinese rows through the tokenizer's own template (stories260K, a Metaspace tokenizer with byte
    fallback, has none: alpaca's): no character offsets are computed, and the labels equal those from offsets."""
    from tunelab.data.masking import Conversation

    tokenizer = load_tokenizer(name)
    if name == "stories260K":
        apply_template(tokenizer, "alpaca")
    rows = [row for dataset in ("alpaca_en_demo", "alpaca_zh_demo")
            for row in load_dataset_rows(dataset, str(llamafactory_dir), "sft", max_samples=20).rows]
    conversations = [Conversation(row["messages"]) for row in rows]
    with mock.patch.object(masking, "_offset_labels", side_effect=AssertionError("offsets were needed")):
        fast = encode_conversations(tokenizer, conversations)
    with mock.patch.object(masking, "token_bytes", return_value=None):
        from_offsets = encode_conversations(tokenizer, conversations)
    assert [item.labels for item in fast] == [item.labels for item in from_offsets]
    assert [item.input_ids for item in fast] == [item.input_ids for item in from_offsets]
    assert sum(item.num_trained for item in fast) > 1000
    assert fast[0].offsets.tolist() == from_offsets[0].offsets.tolist()  # inspection still gets offsets


MESSAGES = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like  the sea."}]


@pytest.mark.parametrize("change", [
    lambda backend: setattr(backend, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)),
    lambda backend: setattr(backend, "normalizer", normalizers.NFKC()),
    lambda backend: setattr(backend, "pre_tokenizer", pre_tokenizers.Whitespace()),
], ids=["leading-space", "normalizer", "spaces-dropped"])
def test_tokenizers_whose_tokens_are_not_the_text_bytes_use_offsets(load_tokenizer, change) -> None:
    tokenizer = load_tokenizer("minimind")
    assert token_bytes(tokenizer) is not None
    change(tokenizer.backend_tokenizer)
    assert token_bytes(tokenizer) is None
    assert encode_conversation(tokenizer, MESSAGES).num_trained > 0


@pytest.mark.parametrize("change", [
    lambda tokenizer: setattr(tokenizer.backend_tokenizer, "normalizer", normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])),
    lambda tokenizer: setattr(tokenizer.backend_tokenizer, "pre_tokenizer", pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits()])),
    lambda tokenizer: tokenizer.add_tokens([AddedToken("<|note|>", lstrip=True)]),
    lambda tokenizer: tokenizer.add_tokens([AddedToken("<|note|>", rstrip=True)]),
    lambda tokenizer: setattr(tokenizer.backend_tokenizer.model, "byte_fallback", False),
], ids=["normalizer", "sequence", "lstrip", "rstrip", "drops-characters"])
def test_metaspace_is_taken_only_where_each_token_is_its_text(load_tokenizer, change) -> None:
    """A Metaspace table is refused where tokens can be shorter than their text, which the "▁" put before the text
    would hide from the byte count: spaces taken by an added token, characters dropped (no byte fallback and no
    unknown token); and where the pre-tokenizer is not alone before the model."""
    tokenizer = load_tokenizer("stories260K")
    assert token_bytes(tokenizer) is not None
    change(tokenizer)
    assert token_bytes(tokenizer) is None


# Texts where the "▁" put before the text stands alone, follows a space, a special token or a Chinese character, or
# is put before every piece of text (prepend scheme "always"), also after a text that starts with a space; and texts
# with "▁" written in them, whose three bytes a count of one each would balance against two marks put before.
METASPACE_TEXTS = ["Hello world", "\nHi there", " Hello  you", " Hi</s>there", "<s>Hello</s> world", "Hello</s>world",
                   "中文 x ok", "a\n\nb  c\td", "x", "Tom's 3.5 km/h, \"fast\"!", "x▁y</s>z", "a ▁ b</s>c d</s>e"]


@pytest.mark.parametrize("scheme", ["first", "always", "never"])
def test_metaspace_labels_equal_the_offsets_for_every_span(load_tokenizer, scheme: str) -> None:
    """Every span of every text: labels from the tokens' bytes, where they decide, equal those from offsets."""
    from tunelab.data.masking import _byte_labels, _offset_labels, _tokenize

    tokenizer = load_tokenizer("stories260K")
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme)
    table = token_bytes(tokenizer)
    decided = 0
    for text in METASPACE_TEXTS:
        [(ids, encoding_of)] = _tokenize(tokenizer, [text])
        for start in range(len(text)):
            for end in range(start + 1, len(text) + 1):
                from_bytes = _byte_labels(text, ids, [(start, end)], table)
                if from_bytes is not None:
                    decided += 1
                    assert from_bytes == _offset_labels(encoding_of(), ids, [(start, end)]), (text, start, end)
    assert decided > 150


def test_an_unknown_token_falls_back_to_offsets(load_tokenizer) -> None:
    """Without byte fallback, characters outside the vocabulary become the unknown token, which stands for text of
    any length (here "ж中", five bytes like "<unk>"): the text takes the offsets, and the labels equal them."""
    from tunelab.data.masking import _labels, _offset_labels, _tokenize

    tokenizer = load_tokenizer("stories260K")
    tokenizer.backend_tokenizer.model.byte_fallback = False
    tokenizer.backend_tokenizer.model.unk_token = "<unk>"
    text = "Fine: ж中 is five bytes."
    [(ids, encoding_of)] = _tokenize(tokenizer, [text])
    assert tokenizer.unk_token_id in ids
    table = token_bytes(tokenizer)
    assert table.bounds(ids, text) is None
    spans = [(text.index("ж"), len(text))]
    assert _labels(text, ids, spans, encoding_of, table) == _offset_labels(encoding_of(), ids, spans)


def test_a_token_that_swallows_spaces_falls_back_to_offsets(load_tokenizer) -> None:
    """An added token with ``lstrip`` takes the spaces before it into no token: the bytes no longer add up, so
    the labels come from the offsets, and equal them."""
    tokenizer = load_tokenizer("minimind")
    tokenizer.add_tokens([AddedToken("<|note|>", lstrip=True)])
    messages = [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": "Here    <|note|> it is."}]
    with mock.patch.object(masking, "token_bytes", return_value=None):
        expected = encode_conversation(tokenizer, messages)
    table = token_bytes(tokenizer)
    assert table is not None
    assert masking._byte_labels(expected.text, expected.input_ids, [(0, len(expected.text))], table) is None
    with mock.patch.object(masking, "_offset_labels", wraps=masking._offset_labels) as from_offsets:
        encoded = encode_conversation(tokenizer, messages)
    assert from_offsets.called
    assert encoded.labels == expected.labels and encoded.num_trained > 0


def test_a_table_follows_the_vocabulary(load_tokenizer) -> None:
    """Tokens added after a table was made get their own: the table is made again for the new vocabulary."""
    tokenizer = load_tokenizer("minimind")
    before = token_bytes(tokenizer)
    tokenizer.add_tokens(["<|brand new|>"])
    after = token_bytes(tokenizer)
    assert after is not None and after is not before
    [new_id] = tokenizer.convert_tokens_to_ids(["<|brand new|>"])
    assert after.bounds([new_id], "<|brand new|>") == [0, len("<|brand new|>")]


def test_a_table_goes_with_its_tokenizer(load_tokenizer) -> None:
    import gc
    import weakref

    from tunelab.data import token_bytes as module

    tokenizer = load_tokenizer("minimind")
    assert token_bytes(tokenizer) is not None
    backend = weakref.ref(tokenizer.backend_tokenizer)
    assert backend() in module._tables
    del tokenizer
    gc.collect()
    assert backend() is None
