"""`gpt2 tokenizer train|encode|decode|show` as a user runs them: train, encode and decode through a real
subprocess (arguments and piped stdin); decode from stdin again, show and the refusals of bad input
through gpt2.cli.main in this process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest


def gpt2(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_text("the cat sat on the mat. the dog sat on the log.\n" * 20, encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["你好世界，你好！", "emoji 👍🏽"] * 10),
                                      encoding="utf-8")
    return tmp_path


def test_train_encode_decode(corpus: Path, tmp_path: Path, cli_env: dict[str, str], gpt2_main, monkeypatch) -> None:
    out = tmp_path / "tok"
    r = gpt2("tokenizer", "train", "--input", str(corpus / "*.txt"), str(corpus / "b.jsonl"), "--vocab-size", "300",
             "--out", str(out), "--special", "<|pad|>", "--quiet", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "saved Tokenizer(name='tok', n_vocab=300" in r.stdout
    assert (out / "tokenizer_meta.json").is_file() and (out / "tokenizer.json").is_file()

    r = gpt2("tokenizer", "encode", str(out), "the cat 你好", env=cli_env)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    r = gpt2("tokenizer", "decode", str(out), *ids, env=cli_env)
    assert r.returncode == 0 and r.stdout == "the cat 你好\n"

    r = gpt2("tokenizer", "encode", str(out), "--format", "json", "--allowed-special", "all", env=cli_env,
             stdin="a<|pad|>")
    assert r.returncode == 0 and json.loads(r.stdout)[-1] == 299
    monkeypatch.setattr("sys.stdin", io.StringIO(r.stdout))  # decode reads the ids from stdin (in this process)
    r = gpt2_main("tokenizer", "decode", str(out), env=cli_env)
    assert r.returncode == 0 and r.stdout == "a<|pad|>\n"



def test_show(tmp_path: Path, cli_env: dict[str, str], small_tok, gpt2_main) -> None:
    out = small_tok.save(tmp_path / "tok")
    r = gpt2_main("tokenizer", "show", str(out), "--merges", "5", "--sample", "the cat 你好\n", "--html",
                  str(tmp_path / "t.html"), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "vocabulary     400 ids: 256 bytes + 142 merges + 2 special" in r.stdout
    assert "merges 0..4 of 142" in r.stdout
    assert "<span" in (tmp_path / "t.html").read_text(encoding="utf-8")


def test_gpt2_through_the_cache(gpt2_cache: Path, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "GPT2_CACHE": str(gpt2_cache)}
    r = gpt2("tokenizer", "encode", "gpt2", "--format", "tokens", env=env, stdin="Hello, world!")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["15496\tHello", "11\t,", "995\t␣world", "0\t!"]


@pytest.mark.parametrize(("args", "message"), [
    (["tokenizer", "train", "--input", "/nonexistent.txt", "--vocab-size", "300", "--out", "OUT"], "no such file or directory"),
    (["tokenizer", "train", "--input", "CORPUS", "--vocab-size", "100", "--out", "OUT"], "vocab_size=100 is too small"),
    (["tokenizer", "encode", "TOK", "x<|endoftext|>"], "contains the special token '<|endoftext|>'"),
    (["tokenizer", "decode", "TOK", "1", "two"], "token id 'two' is not an integer"),
    (["tokenizer", "decode", "TOK", "100000"], "token id 100000 is not in this tokenizer's vocabulary"),
    (["tokenizer", "show", "TOK", "--html", "x.html"], "--html/--png draw a sample text"),
    (["tokenizer", "encode", "/nonexistent-dir", "x"], "not found"),
])
def test_bad_input_is_one_error_line_and_exit_2(args: list[str], message: str, corpus: Path, tmp_path: Path,
                                                 cli_env: dict[str, str], small_tok, gpt2_main) -> None:
    tok_dir = small_tok.save(tmp_path / "tok")
    args = [str(corpus / "a.txt") if a == "CORPUS" else str(tok_dir) if a == "TOK" else
            str(tmp_path / "out") if a == "OUT" else a for a in args]
    r = gpt2_main(*args, env=cli_env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
