"""Tokenize any corpus into llm.c token shards with N worker processes: `gpt2 data prepare`.

    python -m gpt2 data prepare --source ../shared/data/imdb_train.jsonl --field text --tokenizer gpt2 \\
        --out data/imdb --workers 2
    python -c "from gpt2.data.prepare import prepare; print(prepare('shakespeare', out='data/shk').summary())"

What it writes into `out`:

- `train_000000.bin …` and `val_000000.bin …` (gpt2.data.shards): every document is preceded by the
  tokenizer's <|endoftext|> id, as llm.c's and nanoGPT's FineWeb scripts do, so documents are separated
  by it and a model learns to start a document after it (GPT-2 samples unconditionally from that token).
  Every shard but the last of a split holds exactly `shard_size` tokens; documents run across shards.
- `meta.json`: the tokenizer (hash, n_vocab, eot), sources, split rule, counts and shard list, written
  last: a directory with `meta.json` is complete.

Train/val split, decided per document so it does not depend on chunking or the number of workers:
`val_files` (glob patterns on file names: whole files are held out) or `val_fraction` (a document goes
to val when a keyed BLAKE2b hash of its UTF-8 bytes falls below the fraction, so exact duplicates
always land on the same side). With neither, a named corpus uses its own held-out files
(Shakespeare: two whole plays) and anything else DEFAULT_VAL_FRACTION.

Determinism and resume: documents are read in a fixed order (sources as given, files sorted), the
output never depends on the number of workers, and two runs give byte-identical shards. Shards are
written atomically; after each shard (and every few seconds) `.prepare-state.json` records the next
chunk and the tokens not yet in a shard (kept in an append-only `.{split}.pending-N` file), so an
interrupted run (Ctrl-C, SIGKILL, power loss) resumes at its last checkpoint and skips the chunks
already tokenized.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gpt2.common import atomic_write_text
from gpt2.data.shards import (
    HEADER_BYTES,
    MAGIC,
    VERSION_U16,
    VERSION_U32,
    read_header,
    token_dtype,
    write_shard,
)
from gpt2.errors import UserError, UserFileNotFoundError
from gpt2.sources import DEFAULT_CHUNK_BYTES, Chunk, Source, pack_parts, read_chunk, resolve_source

SPLITS = ("train", "val")
META_FILE = "meta.json"
STATE_FILE = ".prepare-state.json"
DEFAULT_SHARD_SIZE = 100_000_000  # llm.c's FineWeb shard size: 200 MB of uint16 tokens
DEFAULT_VAL_FRACTION = 0.01
CHECKPOINT_SECONDS = 10.0
PIPELINE_VERSION = 1  # bump when the same inputs would give different shards
_SPLIT_KEY = b"gpt2-scratch/val-split/v1"
_SPLIT_HASH = hashlib.blake2b(digest_size=8, key=_SPLIT_KEY)
_SHARD_RE = re.compile(r"^(train|val)_(\d{6})\.bin$")


class TokenizerLike(Protocol):
    """What prepare needs from a tokenizer (gpt2.tokenizer.Tokenizer and tiktoken.Encoding both fit)."""

    @property
    def eot_token(self) -> int: ...

    @property
    def n_vocab(self) -> int: ...

    def encode_ordinary(self, text: str) -> list[int]: ...


def tokenizer_hash(tok: Any) -> str:
    """The tokenizer's stable sha256: its own `.hash`, or one computed from a tiktoken.Encoding's parts."""
    h = getattr(tok, "hash", None)
    if isinstance(h, str):
        return h
    ranks, pat = getattr(tok, "_mergeable_ranks", None), getattr(tok, "_pat_str", None)
    if ranks is None or pat is None:
        raise UserError(f"tokenizer {type(tok).__name__} has no .hash to record in meta.json")
    d = hashlib.sha256()
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        d.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
    d.update(json.dumps({"pattern": pat, "special_tokens": sorted(tok._special_tokens.items())}).encode())
    return d.hexdigest()


def load_tokenizer_spec(tokenizer: str | os.PathLike[str] | TokenizerLike) -> tuple[TokenizerLike, str | None]:
    """A tokenizer object and the spec it came from (None when an object was passed in)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from gpt2.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer), str(tokenizer)
    for attr in ("encode_ordinary", "eot_token", "n_vocab"):
        if not hasattr(tokenizer, attr):
            raise UserError(f"tokenizer {type(tokenizer).__name__} lacks .{attr}")
    return tokenizer, None


def is_val_document(text: str, fraction: float) -> bool:
    """The val_fraction rule: a keyed 64-bit BLAKE2b of the document's UTF-8 bytes, below fraction × 2**64."""
    h = _SPLIT_HASH.copy()  # a copy of the keyed state skips the key block for every document
    h.update(text.encode("utf-8", errors="surrogatepass"))
    return int.from_bytes(h.digest(), "big") < fraction * 2**64


@dataclass(frozen=True)
class SplitRule:
    """Which documents go to val: those from files matching `files`, or a `fraction` by content hash."""

    fraction: float = 0.0
    files: tuple[str, ...] = ()

    def file_is_val(self, path: str) -> bool:
        name = os.path.basename(path)
        return any(fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(path, pat) for pat in self.files)

    def describe(self) -> dict[str, Any]:
        if self.files:
            return {"rule": "files", "val_files": list(self.files)}
        return {"rule": "fraction", "val_fraction": self.fraction,
                "hash": f"blake2b(digest_size=8, key={_SPLIT_KEY.decode()}) of the document's UTF-8 < fraction * 2**64"}


# ----------------------------------------------------------------------------------------- workers
@dataclass
class ChunkResult:
    """One chunk's token ids per split (eot before each document) and its counts."""

    tokens: tuple[np.ndarray, np.ndarray]  # (train, val)
    docs: tuple[int, int]
    empty: int
    replaced: int
    nbytes: int


_WORKER: tuple[Callable[[str], list[int]], int, np.dtype, SplitRule] | None = None


def _die_with_parent() -> None:
    """Exit when the parent dies, even by SIGKILL: forked workers share the task pipe's write end, so
    they would otherwise wait on it forever (and keep a caller's stdout pipe open)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _init_worker(tok: TokenizerLike, dtype: np.dtype, rule: SplitRule, allowed: frozenset[str],
                 in_child: bool) -> None:
    global _WORKER
    if in_child:
        # Ctrl-C reaches the whole process group; the parent alone decides what to do with it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
    _WORKER = (_numpy_encoder(tok, allowed), int(tok.eot_token), np.dtype(dtype), rule)


def _numpy_encoder(tok: TokenizerLike, allowed: frozenset[str] = frozenset()) -> Callable[[str], np.ndarray]:
    """text → token ids as a numpy array, by the fastest route the tokenizer offers: ours and tiktoken's
    fill a buffer without making a Python int per token; any other goes through its list. Special-token
    text is ordinary text, but for the `allowed` specials (control tokens), which become their ids."""
    if allowed:
        encode_special = tok.encode  # type: ignore[attr-defined]
        return lambda text: np.array(encode_special(text, allowed_special=allowed, disallowed_special=()),
                                     dtype=np.int64)
    if hasattr(tok, "encode_ordinary_numpy"):
        return tok.encode_ordinary_numpy
    if hasattr(tok, "encode_to_numpy"):  # a tiktoken.Encoding
        return functools.partial(tok.encode_to_numpy, allowed_special=frozenset(), disallowed_special=())
    encode = tok.encode_ordinary
    return lambda text: np.array(encode(text), dtype=np.int64)


def _tokenize_chunk(chunk: Chunk) -> ChunkResult:
    assert _WORKER is not None, "_init_worker runs before any chunk"
    encode, eot, dtype, rule = _WORKER
    groups, replaced = read_chunk(chunk)
    parts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])  # (train, val): eot, doc, eot, doc, ...
    eot_ids = np.array([eot], dtype=np.uint32)
    docs = [0, 0]
    empty = 0
    fraction = rule.fraction
    for origin, texts in groups:
        fixed = (1 if rule.file_is_val(origin) else 0) if rule.files else None
        for text in texts:
            if not text or text.isspace():
                empty += 1
                continue
            s = fixed if fixed is not None else int(fraction > 0 and is_val_document(text, fraction))
            parts[s].append(eot_ids)
            parts[s].append(encode(text))
            docs[s] += 1
    # numpy arrays, not lists: a worker's result crosses a pipe, and 2 bytes a token pickles ~30× faster.
    tokens = tuple(np.concatenate(p).astype(dtype, copy=False) if p else np.empty(0, dtype=dtype) for p in parts)
    return ChunkResult(tokens=(tokens[0], tokens[1]), docs=(docs[0], docs[1]), empty=empty, replaced=replaced,
                       nbytes=chunk.nbytes)


def _start_method() -> str:
    """fork starts a worker in milliseconds with the tokenizer already built, but only where it is safe:
    on Linux, and while this process runs no other thread (an hf: stream's I/O thread could hold a
    lock the child then waits on forever) except tqdm's monitor, which only ever takes tqdm's own lock.
    Otherwise spawn pickles the tokenizer to each worker (and each imports the package: ~1-2 s)."""
    from tqdm.std import TMonitor

    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not isinstance(t, TMonitor)]
    return "fork" if sys.platform.startswith("linux") and not others else "spawn"


def _noop() -> None:
    return None


class _Workers:
    """Tokenize chunks on `workers` processes (in this process for 1), yielding results in input order.

    At most a few chunks per worker are in flight, so a long stream never piles up in memory. The
    processes start in the constructor, before the caller starts any thread of its own (a progress
    bar's monitor), because forking a process that has threads can deadlock the child.
    """

    def __init__(self, workers: int, initargs: tuple[Any, ...]) -> None:
        self.workers = workers
        self.ex: ProcessPoolExecutor | None = None
        if workers == 1:
            _init_worker(*initargs, False)
            return
        ctx = mp.get_context(_start_method())
        self.ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(*initargs, True))
        self.ex.submit(_noop).result()  # with fork, every worker process is created at the first submit

    def map(self, chunks: Iterable[Chunk]) -> Iterator[ChunkResult]:
        if self.ex is None:
            for chunk in chunks:
                yield _tokenize_chunk(chunk)
            return
        pending: deque[Future[ChunkResult]] = deque()
        try:
            for chunk in chunks:
                pending.append(self.ex.submit(_tokenize_chunk, chunk))
                if len(pending) >= 3 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()

    def close(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=True, cancel_futures=True)
            self.ex = None


# ----------------------------------------------------------------------------------------- writing
class _SplitWriter:
    """Fills shards of exactly `shard_size` tokens for one split; mirrors the unfinished shard on disk."""

    def __init__(self, out: Path, split: str, *, shard_size: int, dtype: np.dtype, shards: int = 0,
                 pending: int = 0, on_shard: Callable[[Path], None] | None = None) -> None:
        self.out, self.split, self.shard_size, self.dtype = out, split, shard_size, np.dtype(dtype)
        self.on_shard = on_shard
        self.shards = shards
        self.shard_tokens: list[int] = [shard_size] * shards
        self.buf = np.empty(shard_size, dtype=self.dtype)
        self.fill = pending
        path = self.pending_path(shards)
        if pending:
            # Resume: the pending file holds at least `pending` tokens (anything after is from the
            # interrupted run, past its last checkpoint).
            self.buf[:pending] = np.fromfile(path, dtype=self.dtype, count=pending)
            self._file = open(path, "r+b")  # noqa: SIM115 (held open across chunks; closed in close())
            self._file.truncate(pending * self.dtype.itemsize)
            self._file.seek(0, os.SEEK_END)
        else:
            self._file = open(path, "wb")  # noqa: SIM115

    def pending_path(self, gen: int) -> Path:
        return self.out / f".{self.split}.pending-{gen:06d}"

    def shard_path(self, index: int) -> Path:
        return self.out / f"{self.split}_{index:06d}.bin"

    @property
    def tokens(self) -> int:
        return sum(self.shard_tokens) + self.fill

    def _write_shard(self, n: int) -> None:
        path = self.shard_path(self.shards)
        write_shard(path, self.buf[:n], dtype=self.dtype)
        self.shards += 1
        self.shard_tokens.append(n)
        if self.on_shard is not None:
            self.on_shard(path)

    def add(self, tokens: np.ndarray) -> bool:
        """Append tokens; write every shard that fills up. Returns whether a shard was written."""
        i, n, wrote = 0, len(tokens), False
        while n - i >= self.shard_size - self.fill:
            take = self.shard_size - self.fill
            self.buf[self.fill:] = tokens[i:i + take]
            i += take
            self.fill = 0
            self._write_shard(self.shard_size)
            wrote = True
        rest = tokens[i:]
        self.buf[self.fill:self.fill + len(rest)] = rest
        self.fill += len(rest)
        if wrote:
            # A new generation of pending file: the checkpoint on disk still names the old one.
            self._file.close()
            self._file = open(self.pending_path(self.shards), "wb")  # noqa: SIM115
            self._file.write(self.buf[:self.fill].tobytes())
        else:
            self._file.write(rest.tobytes())
        return wrote

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def drop_stale_pending(self) -> None:
        keep = self.pending_path(self.shards).name
        for p in self.out.glob(f".{self.split}.pending-*"):
            if p.name != keep:
                p.unlink(missing_ok=True)

    def finish(self) -> None:
        """Write the last, partial shard (if any tokens are left)."""
        if self.fill:
            n, self.fill = self.fill, 0
            self._write_shard(n)

    def close(self) -> None:
        self._file.close()


def _our_files(out: Path) -> list[Path]:
    """Everything prepare may have written into `out` (never anything else)."""
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        n = p.name
        if (_SHARD_RE.match(n) or n in (META_FILE, STATE_FILE) or re.match(r"^\.(train|val)\.pending-\d{6}$", n)
                or re.match(r"^\.(train|val)_\d{6}\.bin\..*\.tmp$", n) or re.match(r"^\.(meta\.json|\.prepare-state\.json)\..*\.tmp$", n)):
            found.append(p)
    return sorted(found)


def _remove_outputs(out: Path) -> None:
    for p in _our_files(out):
        p.unlink(missing_ok=True)


def _shards_in(out: Path) -> list[Path]:
    return [p for p in _our_files(out) if _SHARD_RE.match(p.name)]


# ----------------------------------------------------------------------------------------- prepare
@dataclass
class PrepareResult:
    """What `prepare` did: the meta.json it wrote, plus this run's timing (not stored, so meta is reproducible).

    `seconds` covers tokenizing and writing (not resolving sources, fetching a corpus or loading the tokenizer).
    """

    out: Path
    meta: dict[str, Any]
    seconds: float = 0.0
    bytes_done: int = 0  # input bytes tokenized by this run (a resumed run skips the rest)
    tokens_done: int = 0
    resumed_at_chunk: int = 0
    already_done: bool = False
    warnings: list[str] = field(default_factory=list)

    def tokens(self, split: str) -> int:
        return int(self.meta["splits"][split]["tokens"])

    def shard_paths(self, split: str) -> list[Path]:
        return [self.out / s["file"] for s in self.meta["splits"][split]["shards"]]

    def summary(self) -> str:
        m = self.meta
        parts = []
        for split in SPLITS:
            s = m["splits"][split]
            parts.append(f"{split} {s['tokens']:,} tokens / {s['documents']:,} docs in {len(s['shards'])} shard(s)")
        c = m["counts"]
        line = f"{self.out}: " + ", ".join(parts)
        if self.already_done:
            return line + " (already prepared; nothing to do)"
        rate = ""
        if self.seconds > 0:
            rate = (f" in {self.seconds:.1f} s ({self.bytes_done / self.seconds / 1e6:.1f} MB/s, "
                    f"{self.tokens_done / self.seconds / 1e6:.2f} M tokens/s)")
        resumed = f", resumed at chunk {self.resumed_at_chunk}" if self.resumed_at_chunk else ""
        return (f"{line}; {c['input_bytes'] / 1e6:.1f} MB{rate}{resumed}; "
                f"{c['empty_documents']:,} empty documents skipped; "
                f"{c['undecodable_replaced']:,} undecodable byte sequences replaced with U+FFFD")


def _resolve_split(sources: Sequence[Source], val_fraction: float | None,
                   val_files: Sequence[str] | None) -> SplitRule:
    if val_fraction is not None and val_files:
        raise UserError("give val_fraction or val_files, not both")
    if val_fraction is not None:
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"val_fraction={val_fraction} must be in [0, 1)")
        return SplitRule(fraction=float(val_fraction))
    if not val_files:
        defaults = [s.val_files for s in sources]
        if all(defaults):
            val_files = sorted({f for d in defaults for f in d})
        else:
            return SplitRule(fraction=DEFAULT_VAL_FRACTION)
    rule = SplitRule(files=tuple(val_files))
    paths = [str(p) for s in sources for p in s.files]
    for pat in rule.files:
        if not any(SplitRule(files=(pat,)).file_is_val(p) for p in paths):
            names = sorted({os.path.basename(p) for p in paths})
            shown = ", ".join(names[:10]) + (f", … ({len(names)} files)" if len(names) > 10 else "")
            raise UserError(f"val_files pattern {pat!r} matches none of the source files ({shown or 'none'})")
    return rule


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "unknown"


def _remove_if_changed(out: Path, fingerprint: str, config: dict[str, Any]) -> None:
    """A cache's shards (finished or interrupted) made with another configuration are removed, with a line."""
    for name in (META_FILE, STATE_FILE):
        if (out / name).is_file():
            found = json.loads((out / name).read_text())
            if found.get("fingerprint") != fingerprint:
                print(f"{out}: prepared with another configuration (differs in: "
                      f"{_config_diff(found.get('config', {}), config)}); preparing it again", file=sys.stderr)
                _remove_outputs(out)
            return


def _check_done(out: Path, meta: dict[str, Any]) -> str | None:
    """None if every shard meta.json lists is there with the right token count, else what is wrong."""
    for split in SPLITS:
        for s in meta["splits"][split]["shards"]:
            p = out / s["file"]
            if not p.is_file():
                return f"{s['file']} is missing"
            try:
                if read_header(p).n_tokens != s["tokens"]:
                    return f"{s['file']} does not hold the {s['tokens']} tokens meta.json records"
            except ValueError as e:
                return str(e)
    return None


def _check_arguments(sources: Any, *, out: str | os.PathLike[str], workers: int | None, shard_size: int,
                     chunk_bytes: int) -> tuple[Sequence[Any], int, Path]:
    """prepare()'s arguments checked: (the sources as a list, the worker count, the output directory)."""
    if isinstance(sources, (str, os.PathLike, Source)):
        sources = [sources]
    if not sources:
        raise UserError("no sources given")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UserError(f"workers={workers} must be at least 1")
    if not 1 <= shard_size < 2**31:
        raise UserError(f"shard_size={shard_size} must be between 1 and 2**31 - 1 tokens")
    if chunk_bytes < 1:
        raise UserError(f"chunk_bytes={chunk_bytes} must be positive")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={str(out)!r} is a file, not a directory")
    return sources, workers, out


def _configuration(srcs: list[Source], tok: Any, eot: int, rule: SplitRule, shard_size: int,
                   allowed: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """What the shards depend on: (the tokenizer's info, the whole configuration, its fingerprint)."""
    tok_info = {"hash": tokenizer_hash(tok), "n_vocab": int(tok.n_vocab), "eot_token": eot}
    config = {
        "pipeline": PIPELINE_VERSION,
        "tokenizer": tok_info,
        "sources": [s.describe(with_mtime=True) for s in srcs],
        "split": rule.describe(),
        "shard_size": shard_size,
    }
    missing = sorted(allowed - set(getattr(tok, "special_tokens", {}) or {}))
    if missing:
        raise UserError(f"allowed_special {missing[0]!r} is not a special token of the tokenizer")
    if allowed:
        config["allowed_special"] = sorted(allowed)
    fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return tok_info, config, fingerprint


def _existing_output(out: Path, fingerprint: str, config: dict[str, Any], *, overwrite: bool,
                     replace_changed: bool) -> tuple[PrepareResult | None, dict[str, Any] | None]:
    """(the result, when `out` is finished with this configuration; else None, the state of an interrupted
    run to resume, or None); a finished or interrupted run of another configuration is an error."""
    if overwrite:
        _remove_outputs(out)
    state: dict[str, Any] | None = None
    if replace_changed and not overwrite:
        _remove_if_changed(out, fingerprint, config)
    if (out / META_FILE).is_file():
        meta = json.loads((out / META_FILE).read_text())
        if meta.get("fingerprint") != fingerprint:
            raise UserError(f"{out} already holds shards prepared with a different configuration (differs in: "
                             f"{_config_diff(meta.get('config', {}), config)}); pass overwrite=True "
                             "(--overwrite) or choose another output directory")
        problem = _check_done(out, meta)
        if problem:
            raise UserError(f"{out} is damaged ({problem}); pass overwrite=True (--overwrite) to prepare it again")
        return PrepareResult(out=out, meta=meta, already_done=True), None
    if (out / STATE_FILE).is_file():
        state = json.loads((out / STATE_FILE).read_text())
        if state.get("fingerprint") != fingerprint:
            raise UserError(f"{out} holds an interrupted run with a different configuration (differs in: "
                             f"{_config_diff(state.get('config', {}), config)}); pass overwrite=True "
                             "(--overwrite) or choose another output directory")
    elif _shards_in(out):
        raise UserError(f"{out} already holds shard files but no {META_FILE}; pass overwrite=True (--overwrite) "
                         "or choose another output directory")
    return None, state


def _plan(srcs: list[Source], chunk_bytes: int) -> tuple[Iterator[Chunk], int | None]:
    """Every source's chunks in order, and their total bytes (None when a streamed dataset is among them)."""
    plans: list[Iterable[Chunk]] = []
    total_bytes: int | None = 0
    for s in srcs:
        if s.hf_name:
            chunks_iter = s.chunks(chunk_bytes=chunk_bytes)
            first = next(chunks_iter, None)  # opens the stream and checks the field on its first example
            plans.append(itertools.chain([first] if first else [], chunks_iter))
            total_bytes = None
        else:
            planned = list(pack_parts(s.parts(chunk_bytes=chunk_bytes), chunk_bytes=chunk_bytes))
            plans.append(planned)
            if total_bytes is not None:
                total_bytes += sum(c.nbytes for c in planned)
    return itertools.chain.from_iterable(plans), total_bytes


def _open_writers(out: Path, state: dict[str, Any] | None, *, shard_size: int, dtype: np.dtype,
                  on_shard: Callable[[Path], None] | None) -> tuple[int, dict[str, Any], list[_SplitWriter]]:
    """(the chunk to start at, the counts so far, a writer per split), from an interrupted run's state or
    afresh; shards written after the state's last checkpoint and temporary files are removed first."""
    start_chunk = 0
    stats = {"documents": [0, 0], "empty": 0, "replaced": 0, "bytes": 0}
    if state is not None:
        start_chunk = int(state["next_chunk"])
        stats = state["stats"]
        for split_name in SPLITS:
            for p in _shards_in(out):  # whole shards the interrupted run wrote after its last checkpoint
                m = _SHARD_RE.match(p.name)
                assert m is not None, "_shards_in only returns shard names"
                if m.group(1) == split_name and int(m.group(2)) >= state["splits"][split_name]["shards"]:
                    p.unlink()
    for p in _our_files(out):
        if p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
    writers = [
        _SplitWriter(out, name, shard_size=shard_size, dtype=dtype, on_shard=on_shard,
                     shards=int(state["splits"][name]["shards"]) if state else 0,
                     pending=int(state["splits"][name]["pending"]) if state else 0)
        for name in SPLITS
    ]
    return start_chunk, stats, writers


def _tokenize(out: Path, chunks: Iterator[Chunk], writers: list[_SplitWriter], stats: dict[str, Any],
              checkpoint: Callable[[int], None], *, workers: int, worker_args: tuple[Any, ...], start_chunk: int,
              fresh: bool, total_bytes: int | None, progress: bool, t_start: float) -> tuple[int, int]:
    """Tokenize the chunks from `start_chunk` on the workers into the split writers, checkpointing as shards
    fill; returns (bytes, tokens) done. Bad input removes every output; any other stop keeps the checkpoint."""
    from tqdm.auto import tqdm

    pool = _Workers(workers, worker_args)
    bar = tqdm(total=total_bytes, initial=stats["bytes"], unit="B", unit_scale=True, unit_divisor=1000,
               desc="tokenizing", disable=not progress, dynamic_ncols=True)
    bytes_done = tokens_done = 0
    results = pool.map(itertools.islice(chunks, start_chunk, None))
    try:
        if fresh:
            checkpoint(0)
        last_ckpt = time.monotonic()
        for i, res in enumerate(results, start=start_chunk):
            wrote = False
            for w, toks in zip(writers, res.tokens):
                wrote |= w.add(toks)
                tokens_done += len(toks)
            stats["documents"] = [stats["documents"][0] + res.docs[0], stats["documents"][1] + res.docs[1]]
            stats["empty"] += res.empty
            stats["replaced"] += res.replaced
            stats["bytes"] += res.nbytes
            bytes_done += res.nbytes
            bar.update(res.nbytes)
            elapsed = time.perf_counter() - t_start
            if elapsed > 0:
                bar.set_postfix_str(f"{tokens_done / elapsed / 1e6:.2f}M tok/s", refresh=False)
            if wrote or time.monotonic() - last_ckpt > CHECKPOINT_SECONDS:
                checkpoint(i + 1)
                last_ckpt = time.monotonic()
        for w in writers:
            w.finish()
    except ValueError:
        # Bad input (a malformed line deep in a file): the input has to change, so nothing here can
        # be resumed; leave no shard behind.
        results.close()
        pool.close()
        for w in writers:
            w.close()
        _remove_outputs(out)
        raise
    finally:
        # Stops the workers now (not when the garbage collector gets to it); a Ctrl-C or any other
        # error keeps the last checkpoint for the next run to resume from.
        results.close()
        pool.close()
        bar.close()
        for w in writers:
            w.close()
    return bytes_done, tokens_done


def _finish(out: Path, srcs: list[Source], writers: list[_SplitWriter], stats: dict[str, Any], *, rule: SplitRule,
            dtype: np.dtype, tok_spec: Any, tok_info: dict[str, Any], shard_size: int, fingerprint: str,
            config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """meta.json's contents and the warnings for empty splits; an empty corpus removes every output."""
    n_docs = stats["documents"][0] + stats["documents"][1]
    if n_docs == 0:
        _remove_outputs(out)
        with contextlib.suppress(OSError):
            out.rmdir()  # only if we left it empty
        names = ", ".join(s.spec for s in srcs)
        raise UserError(f"empty corpus: {names} hold no documents ({stats['bytes']:,} bytes read, "
                         f"{stats['empty']:,} empty or whitespace-only documents skipped)")
    warnings = []
    wants_val = rule.fraction > 0 or bool(rule.files)
    for k, w in enumerate(writers):
        if w.tokens == 0 and (k == 0 or wants_val):
            why = (f"val_fraction={rule.fraction} picks whole documents and there are only {n_docs}"
                   if rule.fraction else "the val_files hold every document" if k == 0 else "")
            warnings.append(f"the {w.split} split is empty ({why}); "
                            + ("split files into documents (delimiter) or set val_files" if k else "lower val_fraction"))
    meta = {
        "format": {"name": "llm.c token shards", "magic": MAGIC, "version": VERSION_U16 if dtype.itemsize == 2 else VERSION_U32,
                   "dtype": dtype.name, "header_bytes": HEADER_BYTES},
        "tokenizer": {"spec": tok_spec, **tok_info},
        "document_separator": "eot_token before every document",
        "sources": [s.describe() for s in srcs],
        "split": rule.describe(),
        "shard_size": shard_size,
        "counts": {"documents": n_docs, "empty_documents": stats["empty"],
                   "undecodable_replaced": stats["replaced"], "input_bytes": stats["bytes"]},
        "splits": {w.split: {"documents": stats["documents"][k], "tokens": w.tokens,
                             "shards": [{"file": w.shard_path(j).name, "tokens": n}
                                        for j, n in enumerate(w.shard_tokens)]}
                   for k, w in enumerate(writers)},
        "fingerprint": fingerprint,
        "config": config,
    }
    return meta, warnings


def prepare(
    sources: str | os.PathLike[str] | Source | Sequence[str | os.PathLike[str] | Source] = "shakespeare",
    *,
    out: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | TokenizerLike = "gpt2",
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    val_fraction: float | None = None,
    val_files: Sequence[str] | None = None,
    field: str = "text",
    column: str | int | None = None,
    delimiter: str | None = None,
    header: bool = True,
    split: str = "train",
    data_files: Sequence[str] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    overwrite: bool = False,
    replace_changed: bool = False,
    progress: bool = False,
    on_shard: Callable[[Path], None] | None = None,
    allowed_special: Sequence[str] = (),
) -> PrepareResult:
    """Tokenize `sources` into train/val shards in `out` (see the module docstring); resume if interrupted.

    `workers` processes tokenize (None: one per CPU; 1: in this process). `field`, `column`,
    `delimiter`, `header`, `split` and `data_files` say how to read each source (gpt2.sources).
    A finished `out` with the same configuration is left as is; a different one needs `overwrite`, or
    `replace_changed` (for caches, where a changed source or tokenizer means the shards are stale): then a
    finished or interrupted run whose configuration differs is replaced, with a line saying why.
    `on_shard(path)` is called after each shard is written. `allowed_special`: the special tokens (control
    tokens) that become their ids where a document spells them; other special-token text stays text.
    """
    sources, workers, out = _check_arguments(sources, out=out, workers=workers, shard_size=shard_size,
                                             chunk_bytes=chunk_bytes)
    srcs = [resolve_source(s, field=field, column=column, delimiter=delimiter, header=header, split=split,
                           data_files=data_files) for s in sources]
    tok, tok_spec = load_tokenizer_spec(tokenizer)
    dtype = token_dtype(int(tok.n_vocab))
    eot = int(tok.eot_token)
    rule = _resolve_split(srcs, val_fraction, val_files)
    tok_info, config, fingerprint = _configuration(srcs, tok, eot, rule, shard_size, allowed := frozenset(allowed_special))

    # What is in `out` already: a finished run, an interrupted one, or nothing of ours.
    done, state = _existing_output(out, fingerprint, config, overwrite=overwrite, replace_changed=replace_changed)
    if done is not None:
        return done
    if state is not None:
        chunk_bytes = int(state["chunk_bytes"])  # chunk indices in the state refer to its own chunking

    # Plan every file source now: a missing field or column fails here, before any shard exists.
    chunks, total_bytes = _plan(srcs, chunk_bytes)

    out.mkdir(parents=True, exist_ok=True)
    start_chunk, stats, writers = _open_writers(out, state, shard_size=shard_size, dtype=dtype, on_shard=on_shard)

    def checkpoint(next_chunk: int) -> None:
        for w in writers:
            w.sync()
        atomic_write_text(out / STATE_FILE, json.dumps({
            "fingerprint": fingerprint, "config": config, "chunk_bytes": chunk_bytes, "next_chunk": next_chunk,
            "splits": {w.split: {"shards": w.shards, "pending": w.fill} for w in writers}, "stats": stats,
        }, indent=1))
        for w in writers:
            w.drop_stale_pending()

    t_start = time.perf_counter()
    bytes_done, tokens_done = _tokenize(out, chunks, writers, stats, checkpoint, workers=workers,
                                        worker_args=(tok, dtype, rule, allowed), start_chunk=start_chunk,
                                        fresh=state is None, total_bytes=total_bytes, progress=progress,
                                        t_start=t_start)

    meta, warnings = _finish(out, srcs, writers, stats, rule=rule, dtype=dtype, tok_spec=tok_spec, tok_info=tok_info,
                             shard_size=shard_size, fingerprint=fingerprint, config=config)
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=1) + "\n")
    (out / STATE_FILE).unlink(missing_ok=True)
    for w in writers:
        for p in out.glob(f".{w.split}.pending-*"):
            p.unlink(missing_ok=True)
    return PrepareResult(out=out, meta=meta, seconds=time.perf_counter() - t_start, bytes_done=bytes_done,
                         tokens_done=tokens_done, resumed_at_chunk=start_chunk, warnings=warnings)


# -------------------------------------------------------------------------------------------- info
def data_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """meta.json (when there is one) and every shard's header in a directory: `gpt2 data info`."""
    path = Path(path)
    if not path.is_dir():
        raise UserFileNotFoundError(f"{path}: no such directory")
    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else None
    shards: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(path.glob("*.bin")):
        h = read_header(p)
        m = re.match(r"^(.*)_\d+\.bin$", p.name)
        split = m.group(1) if m else p.stem
        shards.setdefault(split, []).append({"file": p.name, "tokens": h.n_tokens, "version": h.version,
                                             "dtype": h.dtype.name})
    if meta is None and not shards:
        raise UserError(f"{path}: no meta.json and no .bin shards here")
    status = "complete" if meta else ("interrupted (run prepare again to resume)"
                                      if (path / STATE_FILE).is_file() else "no meta.json")
    return {"path": str(path), "status": status, "meta": meta, "shards": shards}


def render_info(info: dict[str, Any]) -> str:
    lines = [f"{info['path']}: {info['status']}"]
    meta = info["meta"]
    if meta:
        t = meta["tokenizer"]
        lines.append(f"tokenizer: {t.get('spec') or '(object)'}  n_vocab {t['n_vocab']}  eot {t['eot_token']}  "
                     f"hash {t['hash'][:16]}")
        lines.append(f"format: {meta['format']['dtype']} (version {meta['format']['version']}), "
                     f"shard size {meta['shard_size']:,} tokens")
        lines.append("sources: " + ", ".join(s["spec"] for s in meta["sources"]))
        sp = meta["split"]
        lines.append("split: " + (f"val files {', '.join(sp['val_files'])}" if sp["rule"] == "files"
                                  else f"val fraction {sp['val_fraction']}"))
        c = meta["counts"]
        lines.append(f"documents: {c['documents']:,} ({c['empty_documents']:,} empty skipped), input "
                     f"{c['input_bytes']:,} bytes, {c['undecodable_replaced']:,} undecodable sequences replaced")
    for split, shards in info["shards"].items():
        total = sum(s["tokens"] for s in shards)
        lines.append(f"{split}: {len(shards)} shard(s), {total:,} tokens")
    return "\n".join(lines)
