"""The inference cache: keys and values for every layer, preallocated once."""
from __future__ import annotations

import torch

from picochat.model.config import GPTConfig


class KVCache:
    """Keys and values of shape [layers, batch, kv_heads, max_len, head_dim], filled up to `pos`.

    Every layer writes its new keys and values at `pos`; the model advances `pos` after its last layer.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.config = config
        shape = (config.n_layers, batch_size, config.kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def reset(self) -> None:
        self.pos = 0

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's new k, v [B, kv_heads, T, head_dim] at `pos`; return that layer's keys and values so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {self.pos} cached + {k.size(2)} new tokens > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.pos += num_tokens

    @classmethod
    def from_prefill(cls, prefill: KVCache, batch_size: int, max_len: int | None = None) -> KVCache:
        """A cache of `batch_size` rows, each a copy of a one-row prefill: one prompt, many samples."""
        if prefill.batch_size != 1:
            raise ValueError(f"from_prefill copies a one-row cache, got {prefill.batch_size} rows")
        max_len = prefill.max_len if max_len is None else max_len
        if max_len < prefill.pos:
            raise ValueError(f"max_len {max_len} cannot hold the {prefill.pos} prefilled tokens")
        cache = cls(prefill.config, batch_size, max_len, prefill.k.device, prefill.k.dtype)
        cache.k[:, :, :, :prefill.pos] = prefill.k[:, :, :, :prefill.pos]  # broadcast over the rows
        cache.v[:, :, :, :prefill.pos] = prefill.v[:, :, :, :prefill.pos]
        cache.pos = prefill.pos
        return cache
