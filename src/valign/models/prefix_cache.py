"""Automatic prefix caching: the keys and values of prompt blocks that were computed once.

Prompts in alignment work share long prefixes — few-shot examples before every
revision, one judge template before every pair (in both orders), the first turn of an
MT-Bench question before its second. `PrefixCache` keeps the attention keys and values
of full ``BLOCK``-token blocks, keyed as vLLM's automatic prefix caching keys them: by
the block's tokens *and everything before it* (a hash chain), so a block is reused only
after the very same prefix. A block's keys carry its absolute positions (RoPE), which
match because a prefix always starts at position 0.

The cache is bounded in bytes and evicts the least recently used block. Blocks hold
only keys and values computed from the model's own weights, so a cache belongs to one
decoder (one set of weights) and dies with it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

BLOCK = 16  # tokens per cached block (vLLM's default block size)


@dataclass
class _Block:
    parent: int | None  # the key of the block before, checked on lookup: no false hits
    tokens: tuple[int, ...]
    kv: torch.Tensor  # keys and values: [2, layers, kv heads, BLOCK, head dim]


@dataclass
class CacheStats:
    """Prompt tokens asked for against those computed (shared prefixes once, cached ones
    never), since creation or the last reset."""

    prompt_tokens: int = 0
    computed_tokens: int = 0

    @property
    def saved(self) -> float:
        """The share of prompt tokens that were not computed."""
        return 1 - self.computed_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def reset(self) -> None:
        self.prompt_tokens = self.computed_tokens = 0


class PrefixCache:
    """An LRU map from block-chain keys to blocks of keys and values.

    Example (keys and values of zeros stand in for a model's):
        >>> cache = PrefixCache(max_bytes=64 << 20)
        >>> tokens = list(range(2 * BLOCK + 5))            # two full blocks, then 5 tokens
        >>> keys = cache.chain(tokens, n_blocks=len(tokens) // BLOCK)
        >>> cache.match(tokens, keys)                      # nothing computed yet
        0
        >>> kv = torch.zeros(1, 1, 2 * BLOCK, 4)           # [layers, kv heads, positions, head dim]
        >>> cache.put(tokens, keys, 0, kv, kv)
        >>> other = tokens[:BLOCK] + [7] * BLOCK            # shares the first block only
        >>> cache.match(other, cache.chain(other, n_blocks=2))
        1
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.blocks: OrderedDict[int, _Block] = OrderedDict()
        self.stats = CacheStats()

    @staticmethod
    def chain(tokens: list[int], n_blocks: int) -> list[int]:
        """Keys of the first ``n_blocks`` full blocks: each hashes its parent's key and its tokens."""
        keys: list[int] = []
        parent = 0
        for j in range(n_blocks):
            parent = hash((parent, tuple(tokens[j * BLOCK : (j + 1) * BLOCK])))
            keys.append(parent)
        return keys

    def match(self, tokens: list[int], keys: list[int]) -> int:
        """How many leading blocks of ``tokens`` are cached (and marks them recently used)."""
        parent = None
        for j, key in enumerate(keys):
            block = self.blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tuple(tokens[j * BLOCK : (j + 1) * BLOCK]):
                return j
            self.blocks.move_to_end(key)
            parent = key
        return len(keys)

    def get(self, keys: list[int]) -> torch.Tensor:
        """The cached keys and values of these consecutive blocks: [2, layers, kv heads, n·BLOCK, d]."""
        return torch.cat([self.blocks[k].kv for k in keys], dim=3)

    def put(self, tokens: list[int], keys: list[int], start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores blocks ``start…len(keys)-1`` of a sequence whose keys and values are ``k``
        and ``v`` ([layers, kv heads, ≥len(keys)·BLOCK, d]), skipping blocks already held."""
        if self.max_bytes <= 0:
            return
        for j in range(start, len(keys)):
            if keys[j] in self.blocks:
                continue
            cols = slice(j * BLOCK, (j + 1) * BLOCK)
            block = torch.stack([k[:, :, cols], v[:, :, cols]])
            self.blocks[keys[j]] = _Block(keys[j - 1] if j else None, tuple(tokens[j * BLOCK : (j + 1) * BLOCK]), block)
            self.bytes += block.numel() * block.element_size()
        while self.bytes > self.max_bytes and self.blocks:
            _, old = self.blocks.popitem(last=False)
            self.bytes -= old.kv.numel() * old.kv.element_size()

    def clear(self) -> None:
        self.blocks.clear()
        self.bytes = 0
