"""Truncating a long text for classification: which tokens each side keeps, and that the one encoding
(training, evaluation, `gpt2 classify`) uses it."""

from __future__ import annotations

import pytest

from gpt2.errors import UserError
from gpt2.finetune.data import encode_for_classification, truncate


@pytest.mark.parametrize("side", ["right", "left", "both"])
def test_a_text_that_fits_is_kept_whole(side: str) -> None:
    assert truncate([5, 6, 7], 3, side) == [5, 6, 7]
    assert truncate([5, 6], 8, side) == [5, 6]


def test_each_side_keeps_its_tokens() -> None:
    ids = list(range(20))
    assert truncate(ids, 8, "right") == [0, 1, 2, 3, 4, 5, 6, 7]
    assert truncate(ids, 8, "left") == [12, 13, 14, 15, 16, 17, 18, 19]
    # both: the first quarter (2 tokens) and the last three quarters (6), the middle dropped
    assert truncate(ids, 8, "both") == [0, 1, 14, 15, 16, 17, 18, 19]
    assert truncate(ids, 7, "both") == [0, 14, 15, 16, 17, 18, 19]  # head 7 // 4 = 1, tail 6
    assert truncate(ids, 1, "both") == [19]  # no room for a head: the last token, as "left"


class _Chars:
    """A tokenizer stand-in: one id per character."""

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [[ord(c) for c in t] for t in texts]


def test_encoding_cuts_both_ends_and_counts_the_cut() -> None:
    ids, cut = encode_for_classification(_Chars(), ["abcdefghij", "abc"], max_length=4, truncation_side="both")
    assert ids == [[ord("a"), ord("h"), ord("i"), ord("j")], [ord("a"), ord("b"), ord("c")]]
    assert cut == 1


def test_an_unknown_side_is_one_error() -> None:
    with pytest.raises(UserError, match="truncation_side must be one of left, right, both"):
        encode_for_classification(_Chars(), ["abc"], max_length=2, truncation_side="middle")
