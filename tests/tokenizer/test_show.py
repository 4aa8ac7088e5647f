"""`show`: statistics, readable merges, and the token-boundary pictures."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2.tokenizer import Tokenizer
from gpt2.tokenizer.show import (
    format_token,
    parse_ids,
    render_html,
    render_merges,
    render_stats,
    token_spans,
    vocab_stats,
    write_png,
)


def test_format_token_makes_bytes_readable() -> None:
    assert format_token(b" the") == "␣the"
    assert format_token(b"\n\t") == "\\n\\t"
    assert format_token(b"\xe4\xb8") == "\\xe4\\xb8"  # half a character
    assert format_token("世".encode()) == "世"
    assert format_token(b"\\") == "\\\\" and format_token(b"\x00") == "\\x00"


def test_stats_and_merges(gpt2_tok: Tokenizer) -> None:
    stats = vocab_stats(gpt2_tok, sample="Hello, world!")
    assert stats["n_vocab"] == 50257 and stats["merges"] == 50000 and stats["pattern"] == "gpt2"
    assert sum(stats["token_bytes_histogram"].values()) == 50256
    assert stats["sample"]["tokens"] == 4
    text = render_stats(stats)
    assert "50257 ids: 256 bytes + 50000 merges + 1 special" in text
    merges = render_merges(gpt2_tok, count=3)
    assert merges.splitlines()[1:] == ["    256  ␣ + t → ␣t", "    257  ␣ + a → ␣a", "    258  h + e → he"]
    with pytest.raises(ValueError, match="must be >= 0"):
        render_merges(gpt2_tok, start=-1)


def test_spans_keep_split_characters_together(gpt2_tok: Tokenizer) -> None:
    spans = token_spans(gpt2_tok, "Hi 世界<|endoftext|>")
    assert "".join(piece for _, piece in spans) == "Hi 世界<|endoftext|>"
    assert ([10310, 244], "世") in spans  # two tokens, one character: one box
    assert spans[-1] == ([50256], "<|endoftext|>")


def test_html_has_a_span_per_token(small_tok: Tokenizer) -> None:
    page = render_html(small_tok, "the <b>cat</b>\nsat")
    assert page.count("<span") == len(token_spans(small_tok, "the <b>cat</b>\nsat"))
    assert "&lt;" in page and "<b>" not in page  # text is escaped


def test_png(small_tok: Tokenizer, tmp_path: Path) -> None:
    path = write_png(small_tok, "the cat sat on the mat\nand 你好 👍🏽", tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_ids() -> None:
    assert parse_ids(["1 2", "3"]) == parse_ids(["[1, 2, 3]"]) == parse_ids(["1,2,3"]) == [1, 2, 3]
    with pytest.raises(ValueError, match="'x' is not an integer"):
        parse_ids(["1 x"])
