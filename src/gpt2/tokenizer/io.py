"""Tokenizer files in and out: our format, tiktoken rank files, GPT-2's encoder.json + vocab.bpe, HF tokenizer.json.

    python -c "from gpt2.tokenizer import load_tokenizer; load_tokenizer('gpt2').save('/tmp/gpt2-tok')"

The readers (`read_tokenizer`, `read_pretrained`, `read_our_format`, `read_hf_tokenizer`,
`read_gpt2_files`) return checked `gpt2.tokenizer.core.TokenizerParts`; `Tokenizer.from_parts`
(gpt2.tokenizer.encoding) makes the Tokenizer, and `gpt2.tokenizer.load_tokenizer` does both. The
writers (`save_tokenizer`, `save_hf_tokenizer`, `save_gpt2_files`) take anything with the
`core.SavableTokenizer` attributes. This module builds on core.py only, never on encoding.py.

Formats (each is someone else's where one exists):
- **ours**: `tokenizer.tiktoken` (tiktoken's rank file, `base64(token) rank` per line) plus
  `tokenizer_meta.json` (split pattern, special tokens, the rank file's sha256 and the tokenizer hash).
  Loading re-hashes both and refuses a mismatch. `save_tokenizer` also writes HF's `tokenizer.json`
  and `tokenizer_config.json` beside them, so a checkpoint directory loads in `transformers` too; the
  names never clash with a model's `config.json` / `model.safetensors`.
- **tiktoken**: a bare `.tiktoken` rank file. It holds no pattern or special tokens: GPT-2's pattern
  is assumed and `<|endoftext|>` gets the next free id (for GPT-2's own file that is exactly GPT-2).
- **GPT-2**: `encoder.json` (byte-level token string → id) + `vocab.bpe` (the merges); HF's GPT-2
  repository calls the same two files `vocab.json` + `merges.txt`.
- **HF**: `tokenizer.json` with a byte-level BPE model, written with `ignore_merges: true` because
  tiktoken, our fast path, also takes a chunk that is a whole token as that token.

`read_pretrained("gpt2")` (under `Tokenizer.from_pretrained`) looks in `cache_dir()/tokenizers/gpt2`
first, then tries the HF hub (`openai-community/gpt2`) when huggingface.co is reachable, then the copy
of `gpt2.tiktoken` that PyPI ships in the `openai-whisper==20250625` source distribution. Whatever it
fetches is checked against the sha256 tiktoken pins for GPT-2's ranks and cached; when everything fails
the error lists what was tried and how to fix it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import regex

from gpt2.errors import UserError, UserFileNotFoundError, UserNotADirectoryError
from gpt2.tokenizer.core import (
    ENDOFTEXT,
    GPT2_PATTERN,
    SavableTokenizer,
    TokenizerParts,
    bytes_to_token_str,
    checked_parts,
    hash_parts,
    ranks_to_tiktoken_bytes,
    token_str_to_bytes,
)

RANKS_FILE = "tokenizer.tiktoken"
META_FILE = "tokenizer_meta.json"
HF_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
FORMAT_NAME = "gpt2-scratch-tokenizer"
FORMAT_VERSION = 1

# sha256 of GPT-2's rank file (r50k_base.tiktoken / whisper's gpt2.tiktoken), as tiktoken pins it in
# tiktoken_ext/openai_public.py; our serialisation of GPT-2's ranks is byte-identical to that file.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_HF_REPO = "openai-community/gpt2"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    # gpt2.common imports torch (~1 s); importing it only when a file is written keeps
    # `import gpt2.tokenizer` (CLI calls, data-pipeline workers) at tiktoken's ~0.1 s.
    from gpt2.common import atomic_write_bytes as write

    write(path, data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def cache_dir() -> Path:
    from gpt2.common import cache_dir as get

    return get()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------- tiktoken files
def parse_tiktoken_ranks(data: bytes, *, source: str = "rank file") -> dict[bytes, int]:
    """tiktoken's `base64(token) rank` lines → {token bytes: rank}, with a clear error for a bad line."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise UserError
            token = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (ValueError, binascii.Error):
            raise UserError(f"{source}, line {lineno}: expected 'base64-token rank', got {line[:60]!r}; "
                             "the file is corrupted or not a tiktoken rank file") from None
        if token in ranks:
            raise UserError(f"{source}, line {lineno}: token {token!r} appears twice; the file is corrupted")
        ranks[token] = rank
    if not ranks:
        raise UserError(f"{source} is empty; expected tiktoken's 'base64-token rank' lines")
    return ranks


def load_tiktoken_ranks(path: str | os.PathLike[str]) -> dict[bytes, int]:
    path = Path(path)
    return parse_tiktoken_ranks(path.read_bytes(), source=str(path))


def _gpt2_or_default(ranks: dict[bytes, int], *, name: str) -> TokenizerParts:
    """A bare rank file: GPT-2's pattern, <|endoftext|> after the last rank."""
    eot = max(ranks.values()) + 1
    return checked_parts(ranks, pattern=GPT2_PATTERN, special_tokens={ENDOFTEXT: eot}, name=name)


# --------------------------------------------------------------------------------------- GPT-2 files
_ALPHABET = set(bytes_to_token_str(bytes(range(256))))


def _check_merge_order(ranks: dict[bytes, int], merges: list[tuple[bytes, bytes]], *, source: str) -> None:
    """tiktoken ranks must be the merge order: merge i makes a token whose id is above every earlier one."""
    last = max(ranks[bytes([b])] for b in range(256))
    for i, (a, b) in enumerate(merges):
        rank = ranks.get(a + b)
        if rank is None:
            raise UserError(f"{source}: merge {i + 1} ({bytes_to_token_str(a)} {bytes_to_token_str(b)}) makes a "
                             "token missing from the vocabulary; the vocabulary and merges do not belong together")
        if rank <= last:
            raise UserError(f"{source}: merge {i + 1} makes id {rank}, not above the previous merge's id {last}; "
                             "ids must follow the merge order to be used as BPE ranks")
        if a not in ranks or b not in ranks:
            raise UserError(f"{source}: merge {i + 1} uses a part that is not in the vocabulary")
        last = rank


def _parse_merges(lines: Sequence[str] | Sequence[list[str]], *, source: str) -> list[tuple[bytes, bytes]]:
    out = []
    for k, m in enumerate(lines, 1):
        parts = m.split(" ") if isinstance(m, str) else list(m)
        if len(parts) != 2:
            raise UserError(f"{source}: merge {k} is {m!r}, expected two tokens separated by one space")
        out.append((token_str_to_bytes(parts[0]), token_str_to_bytes(parts[1])))
    return out


def _ranks_from_vocab_and_merges(vocab: dict[str, int], merges: list[tuple[bytes, bytes]], *, specials: set[str],
                                 source: str) -> tuple[dict[bytes, int], dict[str, int]]:
    """A byte-level vocabulary (token string → id) and its merges → (ranks, special tokens); specials by
    name or by being neither a byte nor a merge result (encoder.json lists <|endoftext|> like a token)."""
    made = {bytes([b]) for b in range(256)} | {a + b for a, b in merges}
    ranks: dict[bytes, int] = {}
    special_tokens: dict[str, int] = {}
    for s, i in vocab.items():
        if not isinstance(i, int):
            raise UserError(f"{source}: id of {s!r} is {i!r}, expected an integer")
        if s in specials:
            special_tokens[s] = i
            continue
        b = token_str_to_bytes(s) if all(c in _ALPHABET for c in s) else None
        if b is None or b not in made:
            special_tokens[s] = i
        else:
            ranks[b] = i
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise UserError(f"{source}: the vocabulary lacks {len(missing)} single bytes (first {missing[0]:#04x}); "
                         "only byte-level BPE vocabularies are supported")
    _check_merge_order(ranks, merges, source=source)
    if len(ranks) != 256 + len(merges):
        raise UserError(f"{source}: {len(ranks)} ordinary tokens but 256 bytes + {len(merges)} merges; "
                         "the vocabulary and merges do not belong together")
    return ranks, special_tokens


def read_gpt2_files(encoder_json: str | os.PathLike[str], vocab_bpe: str | os.PathLike[str], *,
                    name: str = "gpt2") -> TokenizerParts:
    """GPT-2's encoder.json + vocab.bpe (or HF's vocab.json + merges.txt) → the tokenizer's parts."""
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    try:
        vocab = json.loads(encoder_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{encoder_json} is not valid JSON ({e.msg} at line {e.lineno}); the file is corrupted") from None
    if not isinstance(vocab, dict):
        raise UserError(f"{encoder_json} must hold a JSON object (token → id), got {type(vocab).__name__}")
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = _parse_merges([ln for ln in lines if ln], source=str(vocab_bpe))
    ranks, specials = _ranks_from_vocab_and_merges(vocab, merges, specials={ENDOFTEXT},
                                                   source=f"{encoder_json} + {vocab_bpe.name}")
    return checked_parts(ranks, pattern=GPT2_PATTERN, special_tokens=specials, name=name)


def gpt2_vocab_and_merges(tok: SavableTokenizer) -> tuple[dict[str, int], list[str]]:
    """The byte-level vocabulary (ordinary tokens in rank order, then specials) and merge lines."""
    vocab = {bytes_to_token_str(t): r for t, r in sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1])}
    vocab.update(sorted(tok.special_tokens.items(), key=lambda kv: kv[1]))
    merges = [f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in tok.merges()]
    return vocab, merges


def save_gpt2_files(tok: SavableTokenizer, directory: str | os.PathLike[str]) -> Path:
    """Write encoder.json + vocab.bpe in GPT-2's exact layout (GPT-2's own files come out byte-identical)."""
    directory = Path(directory)
    if tok.pattern != GPT2_PATTERN:
        # The two files cannot carry a split pattern; a reader would silently use GPT-2's.
        raise UserError("encoder.json + vocab.bpe cannot record a split pattern other than GPT-2's; "
                         "use tok.save(dir) (ours) or tok.save_hf(path) for this tokenizer")
    vocab, merges = gpt2_vocab_and_merges(tok)
    atomic_write_text(directory / "encoder.json", json.dumps(vocab))
    atomic_write_text(directory / "vocab.bpe", "#version: 0.2\n" + "".join(m + "\n" for m in merges))
    return directory


# ------------------------------------------------------------------------------------ HF tokenizer.json
# HF `tokenizers` runs split regexes with Oniguruma, which reads `X{1,3}+` as "X{1,3}, one or more times",
# not as a possessive interval (GPT-4's `\p{N}{1,3}+` then swallows whole digit runs). An atomic group
# `(?>X{1,3})` means the same in both engines, so the export rewrites to it and the import rewrites back.
_ATOM = r"(\\[pP]\{[^}]+\}|\\.|\[(?:\\.|[^\]\\])*\]|[^\\\[\]()|{}])"
_POSSESSIVE_INTERVAL = regex.compile(_ATOM + r"(\{\d+(?:,\d*)?\})\+")
_ATOMIC_INTERVAL = regex.compile(r"\(\?>" + _ATOM + r"(\{\d+(?:,\d*)?\})\)")


def pattern_to_onig(pattern: str) -> str:
    return _POSSESSIVE_INTERVAL.sub(r"(?>\1\2)", pattern)


def pattern_from_onig(pattern: str) -> str:
    return _ATOMIC_INTERVAL.sub(r"\1\2+", pattern)


def hf_tokenizer_json(tok: SavableTokenizer) -> dict[str, Any]:
    """HF `tokenizers` JSON for this tokenizer: split regex, byte-level mapping, BPE, specials as added tokens."""
    vocab, merges = gpt2_vocab_and_merges(tok)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern_to_onig(tok.pattern)}, "behavior": "Isolated", "invert": False},
            byte_level,
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            # tiktoken takes a chunk that is itself a token whole; so does BPE with ignore_merges.
            "ignore_merges": True,
            "vocab": vocab, "merges": merges,
        },
    }


def _hf_config(tok: SavableTokenizer) -> dict[str, Any]:
    eot = ENDOFTEXT if ENDOFTEXT in tok.special_tokens else None
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eot, "eos_token": eot, "unk_token": eot,
            "add_prefix_space": False, "clean_up_tokenization_spaces": False, "model_max_length": 1024}


def save_hf_tokenizer(tok: SavableTokenizer, path: str | os.PathLike[str]) -> Path:
    """Write tokenizer.json (into `path` if it is a directory or has no .json suffix)."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path = path / HF_FILE
    atomic_write_text(path, json.dumps(hf_tokenizer_json(tok), ensure_ascii=False, indent=1))
    return path


def _pattern_from_hf(pre: dict[str, Any] | None, *, source: str) -> str:
    if pre is None:
        raise UserError(f"{source}: no pre_tokenizer; only byte-level BPE tokenizers (GPT-2 style) are supported")
    kind = pre.get("type")
    if kind == "Sequence":
        patterns = [_pattern_from_hf(p, source=source) for p in pre.get("pretokenizers", [])]
        patterns = [p for p in patterns if p]
        if len(patterns) != 1:
            raise UserError(f"{source}: pre_tokenizer needs exactly one split regex, found {len(patterns)}")
        return patterns[0]
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            raise UserError(f"{source}: ByteLevel add_prefix_space=true is not supported (tiktoken adds no space)")
        return GPT2_PATTERN if pre.get("use_regex", True) else ""
    if kind == "Split":
        pat = pre.get("pattern", {})
        if "Regex" not in pat or pre.get("behavior") != "Isolated" or pre.get("invert"):
            raise UserError(f"{source}: Split pre_tokenizer must be an isolated, non-inverted Regex; got {pre}")
        return pattern_from_onig(pat["Regex"])
    raise UserError(f"{source}: pre_tokenizer type {kind!r} is not supported (ByteLevel, Split, Sequence are)")


def read_hf_tokenizer(path: str | os.PathLike[str]) -> TokenizerParts:
    """HF tokenizer.json (byte-level BPE) → the parts of a tokenizer with the same ids."""
    path = Path(path)
    if path.is_dir():
        path = path / HF_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the file is corrupted") from None
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{path}: model type {model.get('type')!r} is not supported; only byte-level BPE is")
    if data.get("normalizer") is not None:
        raise UserError(f"{path}: a normalizer ({data['normalizer'].get('type')}) is not supported; "
                         "tiktoken-style tokenizers apply none")
    pattern = _pattern_from_hf(data.get("pre_tokenizer"), source=str(path))
    specials = {t["content"] for t in data.get("added_tokens", [])}
    vocab = dict(model.get("vocab", {}))
    for t in data.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    merges = _parse_merges(model.get("merges", []), source=str(path))
    ranks, special_tokens = _ranks_from_vocab_and_merges(vocab, merges, specials=specials, source=str(path))
    return checked_parts(ranks, pattern=pattern, special_tokens=special_tokens, name=path.parent.name or "hf")


# ------------------------------------------------------------------------------------------ our format
def save_tokenizer(tok: SavableTokenizer, directory: str | os.PathLike[str]) -> Path:
    """Our format plus HF's tokenizer.json / tokenizer_config.json, each file written atomically."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserNotADirectoryError(f"{directory} exists and is not a directory; tok.save() needs a directory")
    ranks_bytes = ranks_to_tiktoken_bytes(tok.mergeable_ranks)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": tok.name,
        "pattern": tok.pattern,
        "special_tokens": tok.special_tokens,
        "n_vocab": tok.n_vocab,
        "ranks_file": RANKS_FILE,
        "ranks_sha256": _sha256(ranks_bytes),
        "hash": tok.hash,
    }
    atomic_write_bytes(directory / RANKS_FILE, ranks_bytes)
    save_hf_tokenizer(tok, directory / HF_FILE)
    atomic_write_text(directory / HF_CONFIG_FILE, json.dumps(_hf_config(tok), indent=2) + "\n")
    # The meta file goes last: a directory with it is complete.
    atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return directory


def read_our_format(directory: str | os.PathLike[str]) -> TokenizerParts:
    """Our format (tokenizer_meta.json + the rank file it names), both sha256s checked."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{meta_path} is not valid JSON ({e.msg}); the file is corrupted, save the tokenizer again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise UserError(f"{meta_path} is not a {FORMAT_NAME} file (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{meta_path} has format version {meta.get('version')!r}; this code reads version {FORMAT_VERSION}")
    missing = [k for k in ("pattern", "special_tokens", "ranks_sha256", "hash") if k not in meta]
    if missing:
        raise UserError(f"{meta_path} lacks {missing}; the file is corrupted, save the tokenizer again")
    ranks_path = directory / meta.get("ranks_file", RANKS_FILE)
    if not ranks_path.is_file():
        raise UserFileNotFoundError(f"{ranks_path} is missing (named by {meta_path.name}); copy the whole tokenizer directory")
    data = ranks_path.read_bytes()
    if _sha256(data) != meta["ranks_sha256"]:
        raise UserError(f"{ranks_path} does not match {meta_path.name} (sha256 {_sha256(data)[:12]}…, expected "
                         f"{meta['ranks_sha256'][:12]}…): the rank file is corrupted or from another tokenizer; "
                         "save the tokenizer again")
    ranks = parse_tiktoken_ranks(data, source=str(ranks_path))
    parts = checked_parts(ranks, pattern=meta["pattern"], special_tokens=meta["special_tokens"],
                          name=meta.get("name", directory.name))
    got = hash_parts(parts.mergeable_ranks, parts.pattern, parts.special_tokens)
    if got != meta["hash"]:
        raise UserError(f"{meta_path}: the tokenizer hash is {got[:12]}…, the file says {meta['hash'][:12]}…; "
                         "the pattern or special tokens were edited, or the files are mismatched; save it again")
    return parts


# ------------------------------------------------------------------------------------------- loading
def read_tokenizer(spec: str | os.PathLike[str]) -> TokenizerParts:
    """"gpt2" → GPT-2's vocabulary (read_pretrained); a directory in any supported format; or a file
    (`.tiktoken`, `tokenizer.json`, `tokenizer_meta.json`, `encoder.json`); the parts, as a Tokenizer
    takes them (`gpt2.tokenizer.load_tokenizer` returns the Tokenizer).

    A directory is read in this order: ours (tokenizer_meta.json), HF tokenizer.json, encoder.json +
    vocab.bpe (or vocab.json + merges.txt), a single *.tiktoken file.
    """
    if isinstance(spec, str) and spec == "gpt2" and not Path(spec).exists():
        return read_pretrained("gpt2")
    path = Path(spec).expanduser()
    if path.is_file():
        if path.name == META_FILE:
            return read_our_format(path.parent)
        if path.suffix == ".tiktoken":
            return _read_bare_tiktoken(path)
        if path.name in ("encoder.json", "vocab.json"):
            return read_tokenizer(path.parent)
        if path.suffix == ".json":
            return read_hf_tokenizer(path)
        raise UserError(f"{path}: unknown tokenizer file; expected a directory, a .tiktoken file, tokenizer.json "
                         f"or {META_FILE}")
    if not path.is_dir():
        raise UserFileNotFoundError(f"tokenizer {str(spec)!r} not found: not 'gpt2', not a directory, not a file")
    if (path / META_FILE).is_file():
        return read_our_format(path)
    if (path / HF_FILE).is_file():
        return read_hf_tokenizer(path / HF_FILE)
    for enc_name, bpe_name in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if (path / enc_name).is_file() and (path / bpe_name).is_file():
            return read_gpt2_files(path / enc_name, path / bpe_name, name=path.name)
    tiktoken_files = sorted(path.glob("*.tiktoken"))
    if len(tiktoken_files) == 1:
        return _read_bare_tiktoken(tiktoken_files[0])
    if len(tiktoken_files) > 1:
        raise UserError(f"{path} holds {len(tiktoken_files)} .tiktoken files; pass the one you mean")
    raise UserFileNotFoundError(f"{path} holds no tokenizer: expected {META_FILE} + {RANKS_FILE} (ours), {HF_FILE}, "
                            "encoder.json + vocab.bpe, or a .tiktoken file")


def _read_bare_tiktoken(path: Path) -> TokenizerParts:
    data = path.read_bytes()
    ranks = parse_tiktoken_ranks(data, source=str(path))
    return _gpt2_or_default(ranks, name="gpt2" if _sha256(data) == GPT2_RANKS_SHA256 else path.stem)


# ------------------------------------------------------------------------------------- from_pretrained
def gpt2_cache_dir() -> Path:
    return cache_dir() / "tokenizers" / "gpt2"


def _read_gpt2_dir(directory: Path) -> TokenizerParts | None:
    """GPT-2's vocabulary from a directory holding gpt2.tiktoken or encoder.json + vocab.bpe; None if neither."""
    if (directory / "gpt2.tiktoken").is_file():
        parts = _read_bare_tiktoken(directory / "gpt2.tiktoken")
    elif (directory / "encoder.json").is_file() and (directory / "vocab.bpe").is_file():
        parts = read_gpt2_files(directory / "encoder.json", directory / "vocab.bpe")
    else:
        return None
    _check_is_gpt2(parts, source=str(directory))
    return parts


def _check_is_gpt2(parts: TokenizerParts, *, source: str) -> None:
    got = _sha256(ranks_to_tiktoken_bytes(parts.mergeable_ranks))
    if got != GPT2_RANKS_SHA256 or parts.special_tokens != {ENDOFTEXT: 50256}:
        raise UserError(f"{source} does not hold GPT-2's vocabulary (ranks sha256 {got[:12]}…, expected "
                         f"{GPT2_RANKS_SHA256[:12]}…); delete it so it is fetched again, or put GPT-2's files there")


def _online(host: str, *, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fetch_from_hf_hub() -> bytes:
    """GPT-2's ranks (as tiktoken file bytes) from the HF hub's vocab.json + merges.txt."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise OSError("HF_HUB_OFFLINE is set")
    # huggingface_hub retries for ~25 s when the host does not resolve; ask the network first.
    if not _online("huggingface.co"):
        raise OSError("huggingface.co is not reachable (offline?)")
    from huggingface_hub import hf_hub_download

    vocab = hf_hub_download(GPT2_HF_REPO, "vocab.json")
    merges = hf_hub_download(GPT2_HF_REPO, "merges.txt")
    return ranks_to_tiktoken_bytes(read_gpt2_files(vocab, merges).mergeable_ranks)


def extract_sdist_member(archive: str | os.PathLike[str], member: str = WHISPER_MEMBER) -> bytes:
    """One file from an sdist .tar.gz, found by its path below the top-level directory; read, never extracted."""
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            name = info.name.lstrip("./")
            if info.isfile() and (name == member or name.split("/", 1)[-1] == member):
                f = tar.extractfile(info)
                assert f is not None
                return f.read()
    raise UserFileNotFoundError(f"{archive} has no {member}")


def fetch_from_whisper_sdist() -> bytes:
    """GPT-2's gpt2.tiktoken from PyPI's openai-whisper sdist (`pip download --no-deps --no-binary :all:`)."""
    with tempfile.TemporaryDirectory(prefix="gpt2-whisper-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", WHISPER_SDIST, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise OSError("pip download timed out after 300 s") from None
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if not archives:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise OSError(f"pip download failed (exit {proc.returncode}): {tail[0]}")
        return extract_sdist_member(archives[0])


FETCHERS: list[tuple[str, Callable[[], bytes]]] = [
    (f"HF hub {GPT2_HF_REPO} (vocab.json + merges.txt)", fetch_from_hf_hub),
    (f"PyPI sdist {WHISPER_SDIST} ({WHISPER_MEMBER})", fetch_from_whisper_sdist),
]


def read_pretrained(name: str = "gpt2") -> TokenizerParts:
    """GPT-2's tokenizer's parts: the cache, then the HF hub, then PyPI; the result is verified and cached."""
    if name != "gpt2":
        raise UserError(f"unknown pretrained tokenizer {name!r}: only 'gpt2' is known; pass a directory to "
                         "load_tokenizer() for anything else")
    directory = gpt2_cache_dir()
    parts = _read_gpt2_dir(directory) if directory.is_dir() else None
    if parts is not None:
        return parts
    tried = [f"cache {directory} (no gpt2.tiktoken or encoder.json + vocab.bpe)"]
    for label, fetch in FETCHERS:
        try:
            data = fetch()
        except Exception as e:  # any failure of one source means: try the next one
            tried.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if _sha256(data) != GPT2_RANKS_SHA256:
            tried.append(f"{label}: got a file with sha256 {_sha256(data)[:12]}…, not GPT-2's {GPT2_RANKS_SHA256[:12]}…")
            continue
        atomic_write_bytes(directory / "gpt2.tiktoken", data)
        return _read_bare_tiktoken(directory / "gpt2.tiktoken")
    raise UserFileNotFoundError("could not get GPT-2's vocabulary; tried " + "; ".join(tried) +
                            f". Fix: copy gpt2.tiktoken (or encoder.json + vocab.bpe) into {directory}, "
                            "or pass a directory holding them")

