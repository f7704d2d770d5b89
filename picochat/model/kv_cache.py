"""The inference cache: keys and values for every layer, preallocated once, with a position per row."""
from __future__ import annotations

import torch

from picochat.model.config import GPTConfig


class KVCache:
    """Keys and values of shape [layers, rows, kv_heads, max_len, head_dim]; row r holds its first lengths[r] positions.

    A forward on B rows uses rows 0..B-1 and appends to each row at that row's own length. Rows at one position
    (a prompt and its samples) are "level" and take the plain causal path; rows at different positions
    (continuous batching: each row another request) are "ragged" and decode one token each, with per-row
    rotary angles and masks. Every layer writes at the rows' lengths; the model advances them after its last layer.
    With smear on, each row also keeps its last token's embedding, which the next token mixes in; a row at
    position 0 keeps zeros (no previous token).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.config = config
        shape = (config.n_layers, batch_size, config.kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = [0] * batch_size  # on the host: shapes and decisions need no device sync
        self.prev_embed = torch.zeros(batch_size, config.width, device=device, dtype=dtype) if config.smear else None
        self._positions: torch.Tensor | None = None  # lengths as a device tensor, until they change

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    @property
    def pos(self) -> int:
        """The one position of a level cache."""
        start = self.start(self.batch_size)
        if start is None:
            raise ValueError("the cache's rows are at different positions; read `lengths`")
        return start

    def start(self, rows: int) -> int | None:
        """Where the next token of rows 0..rows-1 goes, if they are level; None if they are ragged."""
        first = self.lengths[0]
        return first if all(length == first for length in self.lengths[1:rows]) else None

    def positions(self, rows: int) -> torch.Tensor:
        """The next position of each of rows 0..rows-1, as an int64 tensor [rows] on the cache's device."""
        if self._positions is None or self._positions.numel() != rows:
            self._positions = torch.tensor(self.lengths[:rows], device=self.k.device)
        return self._positions

    def reset(self) -> None:
        self.lengths = [0] * self.batch_size
        self._positions = None
        if self.prev_embed is not None:
            self.prev_embed.zero_()

    def previous_embedding(self, rows: int) -> torch.Tensor:
        """The embedding of the token before each of rows 0..rows-1's next one, [rows, 1, width] (smear)."""
        return self.prev_embed[:rows, None]

    def keep_embedding(self, last: torch.Tensor) -> None:
        """Keep rows 0..B-1's newest token embedding `last` [B, width] for their next token (smear)."""
        self.prev_embed[:last.size(0)] = last

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's new k, v [B, kv_heads, T, head_dim] at each row's length; return the layer's
        keys and values of rows 0..B-1 up to the longest row."""
        rows, new = k.size(0), k.size(2)
        end = max(self.lengths[:rows]) + new
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end - new} cached + {new} new tokens > max_len {self.max_len}")
        start = self.start(rows)
        if start is not None:
            self.k[layer, :rows, :, start:end] = k
            self.v[layer, :rows, :, start:end] = v
        elif new == 1:
            row_index, positions = torch.arange(rows, device=k.device), self.positions(rows)
            self.k[layer, row_index, :, positions] = k[:, :, 0]
            self.v[layer, row_index, :, positions] = v[:, :, 0]
        else:
            raise ValueError(f"ragged rows decode one token at a time, got {new}")
        return self.k[layer, :rows, :, :end], self.v[layer, :rows, :, :end]

    def trim(self, lengths: list[int]) -> None:
        """Rows 0..len(lengths)-1 keep only their first lengths[r] positions (right-padded prompts prefilled
        together: what follows a row's prompt is padding, and its next token overwrites it)."""
        for r, length in enumerate(lengths):
            self.lengths[r] = min(self.lengths[r], length)
        self._positions = None

    def advance(self, num_tokens: int, rows: int | None = None) -> None:
        """Rows 0..rows-1 (all by default) now hold `num_tokens` more positions."""
        for r in range(self.batch_size if rows is None else rows):
            self.lengths[r] += num_tokens
        self._positions = None

    def insert(self, prefill: KVCache, rows: list[int], source_row: int = 0) -> None:
        """Copy row `source_row` of a prefill cache (a prefilled prompt) into `rows`, which then continue from its
        position."""
        if not 0 <= source_row < prefill.batch_size:
            raise ValueError(f"source_row {source_row} is not a row of a {prefill.batch_size}-row cache")
        length = prefill.lengths[source_row]
        if length > self.max_len:
            raise ValueError(f"max_len {self.max_len} cannot hold the {length} prefilled tokens")
        index = torch.tensor(rows, device=self.k.device)
        source = slice(source_row, source_row + 1)
        self.k[:, index, :, :length] = prefill.k[:, source, :, :length]  # broadcast over the rows
        self.v[:, index, :, :length] = prefill.v[:, source, :, :length]
        if self.prev_embed is not None:
            self.prev_embed[index] = prefill.prev_embed[source_row]
        for r in rows:
            self.lengths[r] = length
        self._positions = None

    def move_rows(self, sources: list[int], targets: list[int]) -> None:
        """Copy rows `sources` onto rows `targets` (to keep the rows in use at the front after some leave)."""
        if not sources:
            return
        end = max(self.lengths[r] for r in sources)
        src, dst = torch.tensor(sources, device=self.k.device), torch.tensor(targets, device=self.k.device)
        self.k[:, dst, :, :end] = self.k[:, src, :, :end]
        self.v[:, dst, :, :end] = self.v[:, src, :, :end]
        if self.prev_embed is not None:
            self.prev_embed[dst] = self.prev_embed[src]
        for s, t in zip(sources, targets):
            self.lengths[t] = self.lengths[s]
        self._positions = None

    @classmethod
    def from_prefill(cls, prefill: KVCache, batch_size: int, max_len: int | None = None) -> KVCache:
        """A cache of `batch_size` rows, each a copy of a one-row prefill: one prompt, many samples."""
        cache = cls(prefill.config, batch_size, prefill.max_len if max_len is None else max_len,
                    prefill.k.device, prefill.k.dtype)
        cache.insert(prefill, list(range(batch_size)))
        return cache
