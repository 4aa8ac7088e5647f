"""Byte-level BPE training: `train_bpe` learns the merges (the split patterns and the reference encoder
are gpt2.tokenizer.core's).

    python -m gpt2 tokenizer train --input ../shared/data/tinyshakespeare.txt --vocab-size 4096 --out /tmp/tok-shakespeare

Training (`train_bpe`) works on bytes, never on characters, so any UTF-8 text trains and any text
encodes: the 256 single bytes are the first 256 ranks (rank = byte value) and every merge adds one
rank. It scales the way HF `tokenizers` does, not the way educational trainers do:

1. Pre-split every document with the split regex (GPT-2's by default) and count the unique chunks
   once. IMDB train (33 MB, 7 M chunks) has only ~115 k unique chunks, and every later step works on
   those with their counts.
2. Keep the count of every adjacent pair, and for every pair the set of chunks it occurs in.
3. Take the best pair from a max-heap (lazy deletion: counts only ever fall for existing pairs, so a
   stale heap entry is an upper bound; a popped entry whose count is out of date is pushed back with
   the true count). Merge it in only the chunks that contain it, updating only the pair counts next to
   each merged position, and push the new pairs (all contain the new token) with their final counts.

Tie-breaking is deterministic and independent of input order: the pair with the highest count wins;
among equal counts, the pair whose (left bytes, right bytes) is lexicographically smallest wins.
Special tokens are cut out of the training text before pre-splitting (their text is never learned)
and get the ids after the last merge.
"""

from __future__ import annotations

import heapq
import os
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

import regex

from gpt2.errors import UserError
from gpt2.tokenizer.core import ENDOFTEXT, GPT2_PATTERN, PatternName, resolve_pattern

if TYPE_CHECKING:
    from gpt2.tokenizer.encoding import Tokenizer

# ------------------------------------------------------------------------------------------- input
BLOCK_CHARS = 1 << 22


def _blocks(doc: str, block_chars: int = BLOCK_CHARS) -> Iterator[str]:
    """A long document (a whole .txt file) in ~4 M-character blocks, cut only where pre-splitting is unaffected.

    A cut is made only after a "\n" that follows a non-space character and precedes a non-space
    character: none of the split patterns joins across such a boundary ("\n" alone is its own chunk
    there), so the chunks equal those of the whole document while findall's list stays small.
    """
    n = len(doc)
    start = 0
    while n - start > block_chars:
        q = doc.find("\n", start + block_chars)
        while q != -1 and not (0 < q < n - 1 and not doc[q - 1].isspace() and not doc[q + 1].isspace()):
            q = doc.find("\n", q + 1)
        if q == -1:
            break
        yield doc[start:q + 1]
        start = q + 1
    yield doc[start:] if start else doc


# ----------------------------------------------------------------------------------------- training
def count_chunks(documents: Iterable[str], *, pattern: str = GPT2_PATTERN,
                 special_tokens: Collection[str] = (), progress: bool = False) -> Counter[str]:
    """How often each pre-split chunk occurs, with special-token text cut out first."""
    pat = regex.compile(resolve_pattern(pattern))
    special_re = (regex.compile("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)))
                  if special_tokens else None)
    counts: Counter[str] = Counter()
    bar = _progress(progress, desc="counting chunks", unit="doc")
    for doc in documents:
        if not isinstance(doc, str):
            raise UserError(f"documents must be str, got {type(doc).__name__}; "
                             "for files use train_bpe(files=...) or gpt2.sources.read_documents(...)")
        for block in (_blocks(doc) if len(doc) > BLOCK_CHARS else (doc,)):
            if special_re is not None and special_re.search(block):
                for part in special_re.split(block):
                    counts.update(pat.findall(part))
            else:
                counts.update(pat.findall(block))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return counts


def _progress(enabled: bool, **kwargs):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, tests stay clean).
    return tqdm(file=sys.stderr, mininterval=0.5, disable=None, **kwargs)


# A pair (x, y) is the int x << 32 | y: cheaper to build and hash than a tuple, and this loop does
# little else (measured: 20-30% faster training on IMDB and the Chinese reviews).
_PAIR_SHIFT = 32
_PAIR_MASK = (1 << _PAIR_SHIFT) - 1


def _count_pairs(words: list[list[int]], freqs: list[int]) -> tuple[dict[int, int], dict[int, set[int]]]:
    """Every adjacent pair's count over the chunks (weighted by their counts), and the chunks it occurs in."""
    S = _PAIR_SHIFT
    pair_counts: dict[int, int] = {}
    where: dict[int, set[int]] = {}  # pair -> chunks it occurs in (may also list chunks it has left)
    for i, w in enumerate(words):
        f = freqs[i]
        for x, y in pairwise(w):
            p = x << S | y
            pair_counts[p] = pair_counts.get(p, 0) + f
            s = where.get(p)
            if s is None:
                where[p] = {i}
            else:
                s.add(i)
    return pair_counts, where


def _merge_in_chunks(words: list[list[int]], freqs: list[int], chunks: set[int], a: int, b: int, new: int,
                     pair_counts: dict[int, int]) -> tuple[dict[int, int], dict[int, set[int]]]:
    """Merge (a, b) into `new` in the given chunks (in place), taking the pairs it destroys off pair_counts;
    returns the pairs it creates (all contain `new`) with their counts and the chunks they occur in."""
    S = _PAIR_SHIFT
    ab = a << S | b
    new_s = new << S
    fresh: dict[int, int] = {}
    fresh_where: dict[int, set[int]] = {}
    for i in chunks:
        w = words[i]
        # list.index jumps between candidate positions at C speed: long chunks (CJK runs have
        # no spaces to split on) would otherwise cost a Python step per symbol per merge.
        try:
            j = w.index(a)
        except ValueError:
            continue  # stale index entry: an earlier merge took the pair out of this chunk
        n = len(w)
        f = freqs[i]
        out: list[int] = w[:j]
        hit = False
        while True:
            if j + 1 < n and w[j + 1] == b:
                hit = True
                if j:  # left neighbour: (x, a) becomes (x', new); x' is `new` after a repeat
                    p = w[j - 1] << S | a
                    if p != ab:
                        pair_counts[p] -= f
                    q = out[-1] << S | new
                    fresh[q] = fresh.get(q, 0) + f
                    s = fresh_where.get(q)
                    if s is None:
                        fresh_where[q] = {i}
                    else:
                        s.add(i)
                if j + 2 < n:
                    y = w[j + 2]
                    # When the right neighbour starts another occurrence, that occurrence's
                    # left-neighbour step accounts for the pair between them.
                    if not (y == a and j + 3 < n and w[j + 3] == b):
                        p = b << S | y
                        if p != ab:
                            pair_counts[p] -= f
                        q = new_s | y
                        fresh[q] = fresh.get(q, 0) + f
                        s = fresh_where.get(q)
                        if s is None:
                            fresh_where[q] = {i}
                        else:
                            s.add(i)
                out.append(new)
                j += 2
            else:
                out.append(a)
                j += 1
            try:
                k = w.index(a, j)
            except ValueError:
                out.extend(w[j:])
                break
            if k > j:
                out.extend(w[j:k])
            j = k
        if hit:
            words[i] = out
    return fresh, fresh_where


def learn_merges(chunk_counts: dict[str, int] | dict[bytes, int], *, n_merges: int, min_frequency: int = 2,
                 progress: bool = False) -> list[tuple[bytes, bytes]]:
    """The merges, in order, that byte-level BPE learns from unique chunks and their counts.

    Returns (left bytes, right bytes) pairs; merge i creates rank 256 + i. Stops early when no pair
    occurs `min_frequency` times or more. See the module docstring for the algorithm and tie-breaking.
    """
    if n_merges < 0:
        raise UserError(f"n_merges={n_merges} must be >= 0")
    token_bytes: list[bytes] = [bytes([i]) for i in range(256)]
    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, c in chunk_counts.items():
        b = chunk.encode("utf-8") if isinstance(chunk, str) else chunk
        if len(b) >= 2 and c > 0:  # a one-byte chunk has no pair to merge
            words.append(list(b))
            freqs.append(c)

    S, M = _PAIR_SHIFT, _PAIR_MASK
    pair_counts, where = _count_pairs(words, freqs)
    # Heap entries: (-count, left bytes, right bytes, pair); the bytes break count ties.
    heap = [(-c, token_bytes[p >> S], token_bytes[p & M], p) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    min_frequency = max(min_frequency, 1)
    bar = _progress(progress, total=n_merges, desc="merging", unit="merge")
    heappush, heappop = heapq.heappush, heapq.heappop
    while len(merges) < n_merges and heap:
        negc, ba, bb, ab = heappop(heap)
        c = pair_counts.get(ab, 0)
        if c != -negc:  # stale entry: the pair lost occurrences since it was pushed
            if c > 0:
                heappush(heap, (-c, ba, bb, ab))
            continue
        if c < min_frequency:
            break
        a, b = ab >> S, ab & M
        new = len(token_bytes)
        token_bytes.append(ba + bb)
        merges.append((ba, bb))
        del pair_counts[ab]
        # Every pair this merge creates contains `new`, so none exists yet: count them apart and
        # add them (and push them on the heap) once, with their final counts, after the merge.
        fresh, fresh_where = _merge_in_chunks(words, freqs, where.pop(ab), a, b, new, pair_counts)
        pair_counts.update(fresh)
        where.update(fresh_where)
        for q, c in fresh.items():
            heappush(heap, (-c, token_bytes[q >> S], token_bytes[q & M], q))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return merges


def train_bpe(documents: Iterable[str] | None = None, *, files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
              | None = None, field: str | None = None, column: str | int | None = None, delimiter: str | None = None,
              header: bool = True, vocab_size: int, pattern: PatternName | str = "gpt2",
              special_tokens: Sequence[str] = (ENDOFTEXT,), min_frequency: int = 2, name: str = "bpe",
              progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE tokenizer on documents (an iterable of str) or on files/globs.

    Files are read by `gpt2.sources.read_documents` (field, column, delimiter, header as in
    `gpt2 data prepare`), so the tokenizer trains on exactly the documents the shards will hold.

    vocab_size counts everything: the 256 bytes, the merges and the special tokens, the way HF's
    trainer counts it. Fewer merges are learned when no pair is left with `min_frequency`
    occurrences; the tokenizer is then smaller than asked (its n_vocab says so).
    """
    from gpt2.tokenizer.encoding import Tokenizer

    if (documents is None) == (files is None):
        raise UserError("pass either documents (an iterable of str) or files=... (paths or globs), not both or neither")
    if isinstance(documents, (str, bytes)):
        raise UserError("documents must be an iterable of str, not a single string; wrap it in a list, "
                         "or pass paths as files=...")
    specials = list(dict.fromkeys(special_tokens))
    for s in specials:
        if not isinstance(s, str) or not s:
            raise UserError(f"special token {s!r} must be a non-empty string")
    if vocab_size < 256 + len(specials):
        raise UserError(f"vocab_size={vocab_size} is too small: it must be at least 256 (the bytes) + "
                         f"{len(specials)} special tokens = {256 + len(specials)}")
    pattern = resolve_pattern(pattern)
    if files is not None:
        from gpt2.sources import read_documents

        paths = [os.fspath(files)] if isinstance(files, (str, os.PathLike)) else [os.fspath(f) for f in files]
        documents = read_documents(paths, field=field or "text", column=column, delimiter=delimiter, header=header)
    t0 = time.perf_counter()
    counts = count_chunks(documents, pattern=pattern, special_tokens=specials, progress=progress)
    if not counts:
        raise UserError("the training corpus is empty (no text after removing special tokens); "
                         "check the input files and the --field name")
    t1 = time.perf_counter()
    merges = learn_merges(counts, n_merges=vocab_size - 256 - len(specials), min_frequency=min_frequency,
                          progress=progress)
    t2 = time.perf_counter()
    ranks = {bytes([i]): i for i in range(256)}
    for left, right in merges:
        ranks[left + right] = len(ranks)
    special_ids = {s: len(ranks) + k for k, s in enumerate(specials)}
    if progress:
        print(f"trained {len(ranks) + len(special_ids)} tokens ({len(merges)} merges) from {len(counts):,} unique "
              f"chunks: counting {t1 - t0:.1f}s, merging {t2 - t1:.1f}s", file=sys.stderr)
    return Tokenizer(ranks, pattern=pattern, special_tokens=special_ids, name=name)
