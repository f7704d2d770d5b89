"""Parameter and FLOP accounting, as pure functions of a `GPTConfig` (no torch).

The layout is the one in ARCHITECTURE.md ("Architecture, exactly"); `GPT` in gpt.py builds
the same tensors, and a test checks the two agree.
"""
from __future__ import annotations

from picochat.model.config import GPTConfig

VE_GATE_CHANNELS = 12  # the value-embedding gate reads the first 12 channels of x (nanochat's nanochat/gpt.py)
SMEAR_GATE_CHANNELS = 24  # the smear gate reads the first 24 channels of the embedding (nanochat gpt.py)


def block_matrix_params(cfg: GPTConfig, layer: int) -> int:
    """The 2-D weights of one block: attention q/k/v/proj, the 4x MLP, and the VE gate if any."""
    w, q_dim, kv_dim = cfg.width, cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    attention = q_dim * w + 2 * kv_dim * w + w * q_dim
    mlp = 4 * w * w + w * 4 * w
    gate = cfg.kv_heads * VE_GATE_CHANNELS if cfg.has_value_embedding(layer) else 0
    return attention + mlp + gate


def value_embedding_layers(cfg: GPTConfig) -> int:
    return sum(cfg.has_value_embedding(i) for i in range(cfg.n_layers))


def parameter_counts(cfg: GPTConfig) -> dict[str, int]:
    """Parameters per optimizer group (the names of `GPT.param_groups()`), plus the total."""
    vocab, w = cfg.padded_vocab_size, cfg.width
    counts = {
        "matrix": sum(block_matrix_params(cfg, i) for i in range(cfg.n_layers)),
        "embedding": vocab * w,
        "value_embedding": value_embedding_layers(cfg) * vocab * cfg.kv_heads * cfg.head_dim,
        "lm_head": vocab * w,
        "resid_lambda": cfg.n_layers,
        "x0_lambda": cfg.n_layers,
        "smear_backout": smear_gate_params(cfg) + cfg.smear + cfg.backout,  # the gate, then one λ each
    }
    counts["total"] = sum(counts.values())
    return counts


def smear_gate_params(cfg: GPTConfig) -> int:
    """The smear gate: a 24 -> 1 matmul per token, outside the blocks (so not a scaling param)."""
    return SMEAR_GATE_CHANNELS if cfg.smear else 0


def scaling_params(cfg: GPTConfig) -> int:
    """Kaplan-style count: the matmul weights that cost FLOPs (blocks + lm_head), no embeddings.
    With this count the compute-optimal tokens:params ratio is a stable 10.5 (nanochat dev/LOG.md: Kaplan-style counting gives a stable ratio across scales)."""
    counts = parameter_counts(cfg)
    return counts["matrix"] + counts["lm_head"]


def attention_flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> int:
    """Training FLOPs of QK^T and AV: 2 matmuls x 2 (mul+add) x 3 (fwd+bwd) = 12 per head channel
    per attended position; a windowed layer attends to at most min(window, seq_len) positions."""
    seq_len = cfg.max_seq_len if seq_len is None else seq_len
    return sum(12 * cfg.n_heads * cfg.head_dim * min(window, seq_len) for window in cfg.window_sizes())


def flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6 per matmul weight (2 forward + 4 backward; Kaplan et al. 2020)
    plus attention. Embedding lookups, the per-layer scalars and backout's subtraction are not matmuls and cost ~nothing."""
    return 6 * (scaling_params(cfg) + smear_gate_params(cfg)) + attention_flops_per_token(cfg, seq_len)


def forward_flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> int:
    """Forward-only FLOPs per token (eval, inference): a third of the training figure."""
    return flops_per_token(cfg, seq_len) // 3
