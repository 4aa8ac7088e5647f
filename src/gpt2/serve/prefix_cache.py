"""Prefix caching for `gpt2 serve`: keys and values of token blocks already processed, reused by any later
prompt that begins with the same tokens (an earlier turn of the conversation, a shared system prompt or
few-shot header), so that only the rest of the prompt is prefilled.

    python -m gpt2 serve path/to/checkpoint --prefix-cache-mb 256      # the default; 0 turns it off

    cache = PrefixCache(budget_bytes=64 * 2**20, block_size=16)
    cache.insert(tokens, k, v)               # k, v (n_layer, n_head, len(tokens), head_dim)
    hit = cache.lookup(prompt, limit=len(prompt) - 1)
    hit.tokens, hit.blocks   # tokens reused (a multiple of 16); blocks of (2, n_layer, n_head, 16, head_dim)

The design is vLLM's automatic prefix caching (hashed KV blocks) on the CPU, without a paged attention
kernel: a prompt is cut into blocks of `block_size` tokens, and block i is keyed by a hash chain, the SHA-256
of (block i-1's key, block i's token ids), so a key names the whole prefix up to the end of its block and a
block is only ever reused after the very same tokens. A lookup walks the prompt's keys from the first
block and stops at the first miss; llama.cpp's `cache_prompt` reuses the longest common prefix the same way,
token by token within one slot. The scheduler copies the blocks it found into the prefill's cache as the
past and runs only the remaining tokens (gpt2.serve.scheduler).

Blocks are immutable tensors: a lookup hands out references, so an eviction while a prefill still holds
them only drops the cache's own reference (continuous batching never sees a block change under it).
The cache is bounded by bytes and evicts the least recently used block first. A lookup or insert touches a
chain from its last block to its first, so a block is always more recent than its descendants and eviction
takes leaves before the blocks they hang from: no block is ever kept that no lookup can reach.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gpt2.errors import UserError

BLOCK_SIZE = 16
"""Tokens per cached block (vLLM's default): a prompt reuses its prefix rounded down to a multiple of it."""


def block_keys(tokens: Sequence[int], block_size: int, n_blocks: int, *, salt: bytes = b"") -> list[bytes]:
    """The hash-chain keys of the first n_blocks whole blocks of tokens: key i covers tokens[: (i+1) * block_size].
    `salt` starts the chain: keys/values computed by other weights (a LoRA adapter) must use another salt, as
    vLLM puts the adapter into its block hashes."""
    keys, parent = [], salt
    for i in range(n_blocks):
        block = tokens[i * block_size : (i + 1) * block_size]
        # Fixed-width little-endian ids, so (1, 23) and (12, 3) can never hash alike.
        parent = hashlib.sha256(parent + b"".join(int(t).to_bytes(4, "little") for t in block)).digest()
        keys.append(parent)
    return keys


@dataclass
class Hit:
    """What a lookup found: `tokens` tokens of the prompt's start, in len(blocks) blocks of (2, n_layer, n_head,
    block_size, head_dim) keys (index 0) and values (index 1)."""

    tokens: int = 0
    blocks: list[torch.Tensor] = field(default_factory=list)


class PrefixCache:
    """Least-recently-used store of KV blocks keyed by hash chain, within `budget_bytes`."""

    def __init__(self, *, budget_bytes: int, block_size: int = BLOCK_SIZE) -> None:
        if budget_bytes < 0 or block_size < 1:
            raise UserError(f"the prefix cache needs a budget >= 0 bytes and blocks of >= 1 token, got "
                            f"{budget_bytes} and {block_size}")
        self.budget, self.block_size = budget_bytes, block_size
        self.blocks: collections.OrderedDict[bytes, torch.Tensor] = collections.OrderedDict()  # oldest first
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.blocks)

    def lookup(self, tokens: Sequence[int], *, limit: int, salt: bytes = b"") -> Hit:
        """The longest run of cached blocks at the start of tokens, covering at most `limit` tokens."""
        keys = block_keys(tokens, self.block_size, max(0, min(limit, len(tokens))) // self.block_size, salt=salt)
        found = []
        for key in keys:
            block = self.blocks.get(key)
            if block is None:
                break
            found.append((key, block))
        self._touch([key for key, _ in found])
        return Hit(len(found) * self.block_size, [block for _, block in found])

    def insert(self, tokens: Sequence[int], k: torch.Tensor, v: torch.Tensor, *, salt: bytes = b"") -> int:
        """Store the whole blocks of tokens whose keys/values, k and v (n_layer, n_head, >= len(tokens),
        head_dim), are not cached yet, evicting least recently used blocks of other prefixes to make room (the
        budget holds at every moment). Returns the number of blocks added."""
        n = min(len(tokens), k.shape[2]) // self.block_size
        keys = block_keys(tokens, self.block_size, n, salt=salt)
        self._touch([key for key in keys if key in self.blocks])
        chain = set(keys)
        need = 2 * k.shape[0] * k.shape[1] * self.block_size * k.shape[3] * k.element_size()  # one block's bytes
        added = 0
        for i, key in enumerate(keys):
            if key in self.blocks:
                continue
            if not self._make_room(need, keep=chain):
                break  # the blocks after this one could never be reached without it
            span = slice(i * self.block_size, (i + 1) * self.block_size)
            block = torch.stack([k[:, :, span], v[:, :, span]])  # (2, n_layer, n_head, block_size, head_dim): a copy
            self.blocks[key] = block
            self.bytes += block.nbytes
            added += 1
        self._touch([key for key in keys if key in self.blocks])
        return added

    def _touch(self, keys: list[bytes]) -> None:
        """Mark a chain used, its last block first, so each block ends up more recent than its descendants."""
        for key in reversed(keys):
            self.blocks.move_to_end(key)

    def _make_room(self, need: int, *, keep: set[bytes]) -> bool:
        """Evict least recently used blocks until `need` more bytes fit; False if that would take a block of
        `keep` (the chain being inserted, touched last, so everything else goes first)."""
        while self.bytes + need > self.budget:
            oldest = next(iter(self.blocks), None)
            if oldest is None or oldest in keep:
                return False
            self.bytes -= self.blocks.pop(oldest).nbytes
            self.evicted += 1
        return True
