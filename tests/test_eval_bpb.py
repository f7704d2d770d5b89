"""bits-per-byte: hand-computed values with a model whose predictions we choose."""
import math

import pytest
import torch
import torch.nn.functional as F

from picochat.eval.bpb import bits_per_byte, evaluate_bpb

VOCAB = 11
SPECIAL = 10  # a special token: zero bytes


class UniformModel(torch.nn.Module):
    """Every next token equally likely: ln(V) nats per target."""

    def forward(self, idx, targets=None, loss_reduction="mean"):
        logits = torch.zeros(*idx.shape, VOCAB)
        if targets is None:
            return logits
        nats = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
        return nats.view(targets.shape) if loss_reduction == "none" else nats.sum() / (targets >= 0).sum()


def byte_table(bytes_per_token: int) -> torch.Tensor:
    table = torch.full((VOCAB,), bytes_per_token, dtype=torch.int64)
    table[SPECIAL] = 0
    return table


def batches(targets_rows):
    targets = torch.tensor(targets_rows)
    return [(targets.clamp(min=0), targets)]


@pytest.mark.parametrize("bytes_per_token", [1, 3])
def test_uniform_model_bpb_is_log2_vocab_over_bytes_per_token(bytes_per_token):
    targets = [[1, 2, 3, 4], [5, 6, 7, 8]]
    bpb = evaluate_bpb(UniformModel(), batches(targets), byte_table(bytes_per_token))
    assert bpb == pytest.approx(math.log2(VOCAB) / bytes_per_token, rel=1e-6)


def test_special_and_ignored_targets_are_excluded():
    plain = evaluate_bpb(UniformModel(), batches([[1, 2, 3, 4]]), byte_table(2))
    with_extras = evaluate_bpb(UniformModel(), batches([[1, SPECIAL, 2, -1, 3, 4, SPECIAL]]), byte_table(2))
    assert with_extras == pytest.approx(plain, rel=1e-6)


def test_mixed_byte_lengths_weight_by_bytes():
    table = byte_table(1)
    table[2] = 4
    bpb = evaluate_bpb(UniformModel(), batches([[1, 2]]), table)
    assert bpb == pytest.approx(2 * math.log(VOCAB) / (math.log(2) * 5), rel=1e-6)


def test_max_tokens_stops_after_enough_batches():
    class Counting(UniformModel):
        calls = 0

        def forward(self, idx, targets=None, loss_reduction="mean"):
            Counting.calls += 1
            return super().forward(idx, targets, loss_reduction)

    stream = batches([[1, 2, 3, 4]]) * 10
    evaluate_bpb(Counting(), stream, byte_table(1), max_tokens=8)
    assert Counting.calls == 2


def test_bits_per_byte_is_nats_over_ln2_bytes():
    assert bits_per_byte(math.log(2) * 12, 6) == pytest.approx(2.0)
