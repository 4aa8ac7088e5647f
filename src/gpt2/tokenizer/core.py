"""Byte-level BPE's shared pieces: the split patterns, the merge step, and the plain-Python reference encoder.

    python -c "from gpt2.tokenizer.core import reference_encode; from gpt2.tokenizer import load_tokenizer; \
               print(reference_encode('Hello world', load_tokenizer('gpt2').mergeable_ranks))"

The reference encoder (`reference_encode`) is tiktoken's algorithm written out in Python: split with
the regex, then per chunk take the whole chunk if it is a token, else repeatedly merge the adjacent
pair whose concatenation has the lowest rank (leftmost on ties). Tests hold it equal to the tiktoken
fast path in `encoding.py`. The trainer (bpe.py), the `Tokenizer` (encoding.py) and the file formats
(io.py) all build on this module, which imports none of them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

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

