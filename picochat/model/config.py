"""The model's shape: every size follows from `depth` (the scaling laws in picochat/scaling.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from picochat.errors import PicochatError

WINDOW_LETTERS = {"L": "full context", "S": "half the context"}


class ModelConfigError(PicochatError):
    """A model shape that cannot be built."""


@dataclass(frozen=True)
class GPTConfig:
    depth: int = 12
    vocab_size: int = 32768
    aspect_ratio: int = 64  # width = depth x aspect_ratio, rounded up to a multiple of head_dim
    head_dim: int = 128
    n_kv_heads: int | None = None  # grouped-query attention; None = as many as query heads
    max_seq_len: int = 2048
    window_pattern: str = "SSSL"  # tiled over layers; the last layer is always L
    softcap: float = 15.0  # logit soft-cap, computed in fp32
    rope_base: float = 100_000.0
    # The reference's last-mile extras (nanochat gpt.py), off unless the lab shows they pay at this scale.
    smear: bool = False  # each position adds a gated copy of the previous token's embedding
    backout: bool = False  # λ·(residual after layer n/2) is subtracted before the final norm

    def __post_init__(self):
        self.validate()

    @property
    def n_layers(self) -> int:
        return self.depth

    @property
    def width(self) -> int:
        return math.ceil(self.depth * self.aspect_ratio / self.head_dim) * self.head_dim

    @property
    def n_heads(self) -> int:
        return self.width // self.head_dim

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        """The embedding/lm_head rows: vocab rounded up to a multiple of 64 for matmul efficiency."""
        return math.ceil(self.vocab_size / 64) * 64

    def window_sizes(self) -> list[int]:
        """Per-layer attention window in tokens: L = max_seq_len, S = max_seq_len // 2; last layer L."""
        pattern = self.window_pattern.upper()
        sizes = [self.max_seq_len if pattern[i % len(pattern)] == "L" else self.max_seq_len // 2
                 for i in range(self.n_layers)]
        sizes[-1] = self.max_seq_len
        return sizes

    def has_value_embedding(self, layer: int) -> bool:
        """Value embeddings on alternating layers, always including the last one."""
        return (self.n_layers - 1 - layer) % 2 == 0

    def validate(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ModelConfigError(f"depth must be a positive integer, got {self.depth!r}")
        if self.aspect_ratio < 1:
            raise ModelConfigError(f"aspect_ratio must be >= 1, got {self.aspect_ratio}")
        if self.head_dim < 2 or self.head_dim % 2:
            raise ModelConfigError(f"head_dim must be an even number >= 2 (rotary embeddings pair channels), got {self.head_dim}")
        if self.vocab_size < 2:
            raise ModelConfigError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.max_seq_len < 2:
            raise ModelConfigError(f"max_seq_len must be >= 2, got {self.max_seq_len}")
        if not self.window_pattern or set(self.window_pattern.upper()) - set(WINDOW_LETTERS):
            allowed = ", ".join(f"{k} ({v})" for k, v in WINDOW_LETTERS.items())
            raise ModelConfigError(
                f"window_pattern {self.window_pattern!r} may only use the letters {allowed}, e.g. SSSL or L")
        if self.width < 12:  # the value-embedding gate reads the first 12 channels (accounting.VE_GATE_CHANNELS)
            raise ModelConfigError(f"width {self.width} (depth {self.depth} x aspect_ratio {self.aspect_ratio}, "
                                   f"rounded to head_dim {self.head_dim}) must be at least 12; raise either")
        if self.smear and self.width < 24:  # the smear gate reads the first 24 channels (accounting.SMEAR_GATE_CHANNELS)
            raise ModelConfigError(f"smear needs a width of at least 24, got {self.width}; raise depth or aspect_ratio")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ModelConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                f"(width {self.width} / head_dim {self.head_dim})")
