"""Byte-level BPE's shared pieces: the split patterns, the merge step, and the plain-Python reference encoder.

    python -c "from gpt2.tokenizer.core import reference_encode; from gpt2.tokenizer import load_tokenizer; \
               print(reference_encode('Hello world', load_tokenizer('gpt2').mergeable_ranks))"

The reference encoder (`reference_encode`) is tiktoken's algorithm written out in Python: split with
the regex, then per chunk take the whole chunk if it is a token, else repeatedly merge the adjacent
pair whose concatenation has the lowest rank (leftmost on ties). Tests hold it equal to the tiktoken
fast path in `encoding.py`.

It also holds what the file formats and the `Tokenizer` share: GPT-2's byte-level alphabet (token bytes
↔ "Ġthe"-style strings), tiktoken's rank-file serialisation, the tokenizer hash, `TokenizerParts` (the
ranks, pattern, special tokens and name a reader returns), the checks every tokenizer's parts pass
(`checked_parts`), and `SavableTokenizer` (what the writers read). The imports run one way:
core ← io (the file formats) ← encoding (the `Tokenizer`); the trainer (bpe.py) builds on core too, and
this module imports none of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection
from typing import Literal, NamedTuple, Protocol

import regex

from gpt2.errors import UserError

# GPT-2's split pattern as tiktoken writes it (tiktoken_ext/openai_public.py, r50k_pat_str): the same
# splits as the original `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
# but with possessive quantifiers, which run faster.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's (cl100k_base) split pattern: case-insensitive contractions, digits in groups of at most
# three, and no leading space glued to punctuation runs.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
ENDOFTEXT = "<|endoftext|>"

PatternName = Literal["gpt2", "gpt4"]


def resolve_pattern(pattern: str) -> str:
    """"gpt2"/"gpt4" → that split regex; anything else is taken as a regex and must compile."""
    pattern = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise UserError(f"split pattern {pattern!r} is not a valid regex ({e}); use 'gpt2', 'gpt4' "
                         "or a regex the `regex` module accepts") from None
    return pattern


# ------------------------------------------------------------------------------ byte-level alphabet
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (encoder.json, vocab.bpe and HF's ByteLevel use it).

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, 0x7F-0xA0, 0xAD) map to
    U+0100 onwards in byte order, so every token is a visible string with no spaces ("Ġ" is 0x20).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_UNICODE: dict[int, str] = _bytes_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_UNICODE.items()}


def bytes_to_token_str(b: bytes) -> str:
    """Token bytes → GPT-2's byte-level unicode string (b" the" → "Ġthe")."""
    return "".join(BYTE_TO_UNICODE[x] for x in b)


def token_str_to_bytes(s: str) -> bytes:
    """GPT-2's byte-level unicode string → token bytes; ValueError for a character outside the table."""
    try:
        return bytes(UNICODE_TO_BYTE[c] for c in s)
    except KeyError as e:
        raise UserError(f"token {s!r} is not in GPT-2's byte-level alphabet (character {e.args[0]!r}); "
                         "is this a byte-level BPE vocabulary?") from None


# ------------------------------------------------------------------------------ a tokenizer's parts
def ranks_to_tiktoken_bytes(ranks: dict[bytes, int]) -> bytes:
    """tiktoken's rank file: one `base64(token) rank` line per token, in rank order."""
    return "".join(f"{base64.b64encode(t).decode('ascii')} {r}\n"
                   for t, r in sorted(ranks.items(), key=lambda kv: kv[1])).encode("ascii")


def hash_parts(mergeable_ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int]) -> str:
    """The tokenizer hash (`Tokenizer.hash`, saved in tokenizer_meta.json): sha256 hex of the rank file,
    a NUL, and the split regex (resolved, not "gpt2") with the sorted special tokens as ASCII JSON.
    Saved tokenizers carry it, so the bytes hashed must never change."""
    h = hashlib.sha256(ranks_to_tiktoken_bytes(mergeable_ranks))
    h.update(b"\0")
    h.update(json.dumps({"pattern": pattern, "special_tokens": sorted(special_tokens.items())},
                        ensure_ascii=True).encode("ascii"))
    return h.hexdigest()


class TokenizerParts(NamedTuple):
    """What a tokenizer is made of, as the readers in io.py return it; `Tokenizer.from_parts` builds one."""

    mergeable_ranks: dict[bytes, int]
    pattern: str
    special_tokens: dict[str, int]
    name: str


def checked_parts(mergeable_ranks: dict[bytes, int], *, pattern: str = "gpt2",
                  special_tokens: dict[str, int] | None = None, name: str = "bpe") -> TokenizerParts:
    """Check the parts of a byte-level BPE tokenizer (UserError naming the first fault); the pattern comes
    back resolved ("gpt2" → its regex) and the special tokens as a copy. `Tokenizer()` runs these checks."""
    specials = dict(special_tokens or {})
    missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
    if missing:
        raise UserError(f"the ranks lack {len(missing)} of the 256 single bytes (first: {missing[0]:#04x}); "
                         "a byte-level BPE vocabulary must contain every byte")
    rank_ids = set(mergeable_ranks.values())
    if len(rank_ids) != len(mergeable_ranks):
        raise UserError("two tokens in the ranks share one id; every token needs its own rank")
    if not all(isinstance(i, int) and 0 <= i < 2**32 for i in rank_ids):
        raise UserError("token ranks must be integers in 0..2**32-1 (tiktoken stores them as u32)")
    for s, i in specials.items():
        if not isinstance(s, str) or not s:
            raise UserError(f"special token {s!r} must be a non-empty string")
        if not isinstance(i, int) or i < 0:
            raise UserError(f"special token {s!r} has id {i!r}; ids must be integers >= 0")
        if i in rank_ids:
            raise UserError(f"special token {s!r} has id {i}, which an ordinary token already has")
    if len(set(specials.values())) != len(specials):
        raise UserError(f"special tokens {specials} share an id; give each its own")
    return TokenizerParts(mergeable_ranks, resolve_pattern(pattern), specials, name)


class SavableTokenizer(Protocol):
    """What the writers in io.py read from a tokenizer (`Tokenizer` has all of it)."""

    @property
    def mergeable_ranks(self) -> dict[bytes, int]: ...

    @property
    def special_tokens(self) -> dict[str, int]: ...

    @property
    def pattern(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def n_vocab(self) -> int: ...

    @property
    def hash(self) -> str: ...

    def merges(self) -> list[tuple[bytes, bytes]]: ...


# ------------------------------------------------------------------------------ reference encoder
def bpe_encode_piece(piece: bytes, ranks: dict[bytes, int], *, max_rank: int | None = None) -> list[bytes]:
    """Split one pre-split chunk into tokens the way tiktoken does (rank-ordered merges, leftmost first).

    With `max_rank`, only tokens of lower rank may be formed: splitting a token with max_rank=its own
    rank gives the two parts it was merged from.
    """
    if max_rank is None and piece in ranks:
        return [piece]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank = None
        best_i = -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (max_rank is None or r < max_rank) and (best_rank is None or r < best_rank):
                best_rank, best_i = r, i
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def reference_encode(text: str, ranks: dict[bytes, int], *, pattern: str = GPT2_PATTERN,
                     special_tokens: dict[str, int] | None = None,
                     allowed_special: Collection[str] = ()) -> list[int]:
    """Plain-Python encoder: the same ids as the tiktoken fast path, only slower.

    Only specials in `allowed_special` become special ids; checking for disallowed ones is the
    caller's job (Tokenizer.encode does it). Lone surrogates become U+FFFD first, as in tiktoken.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    pat = regex.compile(pattern)
    specials = special_tokens or {}
    allowed = [s for s in allowed_special if s in specials]
    segments: list[tuple[str, bool]]
    if allowed:
        special_re = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
        segments = [(part, k % 2 == 1) for k, part in enumerate(special_re.split(text)) if part]
    else:
        segments = [(text, False)]
    ids: list[int] = []
    cache: dict[str, list[int]] = {}
    for part, is_special in segments:
        if is_special:
            ids.append(specials[part])
            continue
        for chunk in pat.findall(part):
            got = cache.get(chunk)
            if got is None:
                got = cache[chunk] = [ranks[p] for p in bpe_encode_piece(chunk.encode("utf-8"), ranks)]
            ids.extend(got)
    return ids

