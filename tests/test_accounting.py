"""Parameter and FLOP counts against hand calculations of the ARCHITECTURE.md layout."""
from picochat.model.accounting import (
    flops_per_token, forward_flops_per_token, parameter_counts, scaling_params,
)
from picochat.model.config import GPTConfig

GROUPS = {"matrix", "embedding", "value_embedding", "lm_head", "resid_lambda", "x0_lambda", "smear_backout"}


def d2_config():
    # width = 2 x 32 = 64 (already a multiple of head_dim 32), 2 heads, vocab 1000 padded to 1024;
    # windows at max_seq_len 256: layer 0 S = 128, layer 1 (last) L = 256; VE on layer 1 only.
    return GPTConfig(depth=2, vocab_size=1000, aspect_ratio=32, head_dim=32, max_seq_len=256, window_pattern="SSSL")


def d4_gqa_config():
    # width = 4 x 32 = 128, 4 query heads, 2 kv heads (kv dim 64), vocab 1024, all layers full context;
    # VE on layers 1 and 3.
    return GPTConfig(depth=4, vocab_size=1000, aspect_ratio=32, head_dim=32, n_kv_heads=2,
                     max_seq_len=256, window_pattern="L")


def test_parameter_counts_d2_by_hand():
    w, vocab = 64, 1024
    per_layer = (w * w) * 4 + (4 * w * w) * 2  # q, k, v, attn proj; MLP up and down
    gate = 2 * 12  # kv_heads x 12 channels, on the one VE layer
    expected = {
        "matrix": 2 * per_layer + gate,  # 2 * 49_152 + 24
        "embedding": vocab * w,
        "value_embedding": 1 * vocab * (2 * 32),
        "lm_head": vocab * w,
        "resid_lambda": 2,
        "x0_lambda": 2,
        "smear_backout": 0,  # smear and backout off
    }
    expected["total"] = sum(expected.values())
    assert parameter_counts(d2_config()) == expected
    assert expected["total"] == 294_940


def test_parameter_counts_d4_with_grouped_query_attention_by_hand():
    w, kv_dim, vocab = 128, 2 * 32, 1024
    per_layer = w * w + 2 * kv_dim * w + w * w + 2 * (4 * w * w)  # q, k+v at kv width, proj, MLP
    counts = parameter_counts(d4_gqa_config())
    assert counts["matrix"] == 4 * per_layer + 2 * (2 * 12) == 720_944
    assert counts["value_embedding"] == 2 * vocab * kv_dim
    assert counts["embedding"] == counts["lm_head"] == vocab * w
    assert counts["resid_lambda"] == counts["x0_lambda"] == 4
    assert set(counts) == GROUPS | {"total"}


def test_scaling_params_are_matrix_plus_lm_head():
    assert scaling_params(d2_config()) == (2 * 49_152 + 24) + 1024 * 64
    assert scaling_params(d4_gqa_config()) == 720_944 + 1024 * 128


def test_flops_per_token_d2_by_hand():
    n_scaling = 98_328 + 65_536
    attention = 12 * 2 * 32 * (128 + 256)  # heads x head_dim x attended positions, per layer
    assert flops_per_token(d2_config()) == 6 * n_scaling + attention == 1_278_096


def test_flops_per_token_d4_by_hand_and_shorter_sequences():
    n_scaling = 720_944 + 131_072
    assert flops_per_token(d4_gqa_config()) == 6 * n_scaling + 12 * 4 * 32 * (4 * 256)
    # a sequence shorter than every window attends to only its own length
    assert flops_per_token(d4_gqa_config(), seq_len=100) == 6 * n_scaling + 12 * 4 * 32 * (4 * 100)
    assert flops_per_token(d2_config(), seq_len=200) == 6 * 163_864 + 12 * 2 * 32 * (128 + 200)


def test_forward_flops_are_a_third_of_training():
    cfg = d4_gqa_config()
    assert forward_flops_per_token(cfg) == flops_per_token(cfg) // 3
    assert forward_flops_per_token(cfg) == 2 * 852_016 + 4 * 32 * 4 * 4 * 256
