"""The Tokenizer: fast path equal to the plain-Python reference, round trips, special tokens, pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2.tokenizer import Tokenizer, reference_encode, train_bpe

EOT = "<|endoftext|>"
GPT2_HASH = "6e91dc3775c1c45ae1f88680a83928a22c984cdd6664b31abe82bcbae3f80ae0"
# Arbitrary str (hypothesis never draws lone surrogates here; they are tested on their own below),
# mixed with pieces that stress byte-level BPE: emoji with modifiers, combining marks, CJK, controls,
# CRLF, long whitespace, and special-token text.
_tricky = st.sampled_from(["👍🏽", "👨‍👩‍👧", "e\u0301", "\u0301", "中文分词", "한국어", "\x00", "\x1b[0m", "\r\n",
                           "   \n\n", "\t", EOT, "<|pad|>", "<|endoftext", "'s", "'LL", "1234567", "\ufeff", "\U0010ffff"])
texts = st.lists(st.one_of(st.text(max_size=30), _tricky), max_size=12).map("".join)
_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=["small", "gpt2"])
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    return request.getfixturevalue(f"{request.param}_tok")


@_settings
@given(s=texts)
def test_round_trip_any_str(tok: Tokenizer, s: str) -> None:
    assert tok.decode(tok.encode_ordinary(s)) == s
    assert tok.decode(tok.encode(s, allowed_special="all")) == s
    assert tok.decode_bytes(tok.encode_ordinary(s)) == s.encode("utf-8")


@_settings
@given(s=texts)
def test_fast_path_equals_reference(tok: Tokenizer, s: str) -> None:
    ranks, pat, specials = tok.mergeable_ranks, tok.pattern, tok.special_tokens
    assert tok.encode_ordinary(s) == reference_encode(s, ranks, pattern=pat, special_tokens=specials)
    assert tok.encode(s, allowed_special="all") == reference_encode(s, ranks, pattern=pat, special_tokens=specials,
                                                                    allowed_special=tok.special_tokens_set)


@_settings
@given(s=texts)
def test_numpy_encoding_equals_the_list(tok: Tokenizer, s: str) -> None:
    """encode_ordinary_numpy (gpt2 data prepare's path) gives encode_ordinary's ids, special text included."""
    for text in (s, s + "<|endoftext|>" + s):
        arr = tok.encode_ordinary_numpy(text)
        assert arr.dtype == np.uint32 and arr.tolist() == tok.encode_ordinary(text)


@_settings
@given(s=texts)
def test_special_text_is_refused_never_silently_special(tok: Tokenizer, s: str) -> None:
    has_special = any(sp in s for sp in tok.special_tokens_set)
    if has_special:
        with pytest.raises(ValueError, match="contains the special token"):
            tok.encode(s)
    else:
        assert tok.encode(s) == tok.encode_ordinary(s)
    special_ids = set(tok.special_tokens.values())
    assert not special_ids & set(tok.encode_ordinary(s))
    assert not special_ids & set(tok.encode(s, disallowed_special=()))


def test_special_tokens_when_allowed(small_tok: Tokenizer) -> None:
    ids = small_tok.encode(f"a{EOT}b<|pad|>", allowed_special={EOT}, disallowed_special=())
    assert small_tok.eot_token in ids and small_tok.special_tokens["<|pad|>"] not in ids
    assert small_tok.decode(ids) == f"a{EOT}b<|pad|>"
    with pytest.raises(ValueError, match=r"special token '<\|pad\|>'"):
        small_tok.encode(f"a{EOT}b<|pad|>", allowed_special={EOT})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_decode_without_raising(tok: Tokenizer, data: bytes) -> None:
    byte_ids = [tok.mergeable_ranks[bytes([b])] for b in data]
    assert tok.decode_bytes(byte_ids) == data
    assert tok.decode(byte_ids) == data.decode("utf-8", errors="replace")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_ids_decode_without_raising(tok: Tokenizer, data: st.DataObject) -> None:
    valid = sorted(tok._id_bytes())
    ids = data.draw(st.lists(st.sampled_from(valid), max_size=40))
    assert isinstance(tok.decode(ids), str)
    assert tok.decode_bytes(ids) == b"".join(tok.decode_single_token_bytes(i) for i in ids)


def test_lone_surrogates_become_replacement_characters(small_tok: Tokenizer) -> None:
    # Documented choice (as tiktoken): a lone surrogate cannot be UTF-8, so it is encoded as U+FFFD.
    for s in ["\ud800", "a\udfffb", "x\ud83d"]:
        expected = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        assert small_tok.encode_ordinary(s) == small_tok.encode_ordinary(expected)
        assert small_tok.encode_ordinary_numpy(s).tolist() == small_tok.encode_ordinary(expected)
        assert small_tok.decode(small_tok.encode(s)) == expected
        assert reference_encode(s, small_tok.mergeable_ranks, pattern=small_tok.pattern) == small_tok.encode(s)


def test_gpt2_known_values(gpt2_tok: Tokenizer) -> None:
    assert gpt2_tok.encode("Hello, world!") == [15496, 11, 995, 0]
    assert gpt2_tok.n_vocab == 50257 and gpt2_tok.eot_token == 50256
    assert gpt2_tok.encode(EOT, allowed_special="all") == [50256]
    assert gpt2_tok.encode(EOT, disallowed_special=()) == [27, 91, 437, 1659, 5239, 91, 29]
    # A stable identity: the data pipeline writes it into meta.json, so it must never drift.
    assert gpt2_tok.hash == GPT2_HASH


def test_token_to_id_and_back(gpt2_tok: Tokenizer) -> None:
    assert gpt2_tok.token_to_id("Ġthe") == gpt2_tok.token_to_id(b" the") == 262
    assert gpt2_tok.id_to_token(262) == "Ġthe"
    assert gpt2_tok.token_to_id(EOT) == 50256 and gpt2_tok.id_to_token(50256) == EOT
    assert gpt2_tok.decode_single_token_bytes(262) == b" the"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        gpt2_tok.token_to_id("Ġnot-a-token-at-all")
    with pytest.raises(ValueError, match="token id 50257 is not in"):
        gpt2_tok.id_to_token(50257)


@pytest.mark.parametrize("bad", [[50257], [-1], [10**12], [1, "x"]])
def test_decoding_an_unknown_id_names_it(gpt2_tok: Tokenizer, bad: list) -> None:
    with pytest.raises(ValueError, match="is not in this tokenizer's vocabulary"):
        gpt2_tok.decode(bad)


def test_batch_apis_match_single_calls(small_tok: Tokenizer) -> None:
    docs = ["hello world", "", "中文 text", f"x{EOT}y"]
    assert small_tok.encode_ordinary_batch(docs, num_threads=2) == [small_tok.encode_ordinary(d) for d in docs]
    assert small_tok.encode_batch(docs, allowed_special="all") == [small_tok.encode(d, allowed_special="all") for d in docs]
    with pytest.raises(ValueError, match="contains the special token"):
        small_tok.encode_batch(docs)
    assert small_tok.decode_batch(small_tok.encode_ordinary_batch(docs)) == docs


def test_pickles_for_worker_processes(small_tok: Tokenizer) -> None:
    clone = pickle.loads(pickle.dumps(small_tok))
    assert clone == small_tok and clone.hash == small_tok.hash
    assert clone.encode_ordinary("hello 世界") == small_tok.encode_ordinary("hello 世界")


def test_pickled_tokenizer_works_in_a_subprocess(small_tok: Tokenizer) -> None:
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(small_tok.encode_ordinary, ("hello world",)) == small_tok.encode_ordinary("hello world")


def test_hash_changes_with_any_part(small_tok: Tokenizer) -> None:
    ranks = small_tok.mergeable_ranks
    base = Tokenizer(ranks, pattern=small_tok.pattern, special_tokens=small_tok.special_tokens)
    assert base.hash == small_tok.hash  # the name is not part of the identity
    assert Tokenizer(ranks, pattern="gpt4", special_tokens=small_tok.special_tokens).hash != base.hash
    assert Tokenizer(ranks, special_tokens={EOT: 999}).hash != base.hash
    fewer = {t: r for t, r in ranks.items() if r < max(ranks.values())}
    assert Tokenizer(fewer, special_tokens=small_tok.special_tokens).hash != base.hash


def test_constructor_validates(small_tok: Tokenizer) -> None:
    ranks = dict(small_tok.mergeable_ranks)
    with pytest.raises(ValueError, match="lack 1 of the 256 single bytes"):
        Tokenizer({t: r for t, r in ranks.items() if t != b"a"})
    with pytest.raises(ValueError, match="an ordinary token already has"):
        Tokenizer(ranks, special_tokens={EOT: 5})
    with pytest.raises(ValueError, match="not a valid regex"):
        Tokenizer(ranks, pattern="[")
    no_eot = Tokenizer(ranks, special_tokens={})
    with pytest.raises(ValueError, match="no <|endoftext|>"):
        _ = no_eot.eot_token


def test_merges_are_recovered_from_ranks(small_tok: Tokenizer) -> None:
    merges = small_tok.merges()
    assert len(merges) == len(small_tok.mergeable_ranks) - 256
    for k, (a, b) in enumerate(merges):
        assert small_tok.mergeable_ranks[a + b] == 256 + k


def test_train_then_encode_chinese(shared_data: Path) -> None:
    import json

    docs = [json.loads(line)["text"] for line in (shared_data / "douban_movie_reviews_zh.jsonl").read_text(encoding="utf-8").splitlines()]
    tok = train_bpe(docs, vocab_size=1024)
    ids = tok.encode_ordinary_batch(docs)
    assert [tok.decode(x) for x in ids] == docs
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert sum(map(len, ids)) < 0.6 * n_bytes  # merges did compress the 3-byte characters
