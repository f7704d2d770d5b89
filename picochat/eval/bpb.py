"""Bits per byte: the loss in a unit that does not depend on the tokenizer.

Summed nats over target tokens, divided by ln 2 and by the UTF-8 bytes those targets
stand for (seed facts, "Evaluation": special tokens count zero bytes and are left out),
so runs with different vocabularies compare fairly.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.distributed as dist


def bits_per_byte(total_nats: float, total_bytes: float) -> float:
    """Pure: nats over a span of text -> bits per UTF-8 byte of that text."""
    if total_bytes <= 0:
        return float("inf")
    return total_nats / (math.log(2) * total_bytes)


@torch.no_grad()
def evaluate_bpb(model, batches: Iterable, token_bytes: torch.Tensor, max_tokens: int | None = None) -> float:
    """bpb of `model` over `batches` of (inputs, targets); the same number on every rank.

    Targets of -1 (ignored) and targets whose byte length is 0 (special tokens) add nothing.
    `max_tokens` stops after that many target positions (per rank), counted a batch at a time.
    """
    nats_sum, bytes_sum, seen = None, None, 0
    for inputs, targets in batches:
        token_bytes = token_bytes.to(targets.device)
        nats = model(inputs, targets, loss_reduction="none").float()
        counted = targets >= 0
        target_bytes = torch.where(counted, token_bytes[targets.clamp(min=0)], 0)
        counted = counted & (target_bytes > 0)
        batch_nats = (nats * counted).sum(dtype=torch.float64)
        batch_bytes = target_bytes.sum(dtype=torch.float64)
        nats_sum = batch_nats if nats_sum is None else nats_sum + batch_nats
        bytes_sum = batch_bytes if bytes_sum is None else bytes_sum + batch_bytes
        seen += targets.numel()
        if max_tokens is not None and seen >= max_tokens:
            break
    if nats_sum is None:
        raise ValueError("evaluate_bpb got no batches")
    sums = torch.stack([nats_sum, bytes_sum])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return bits_per_byte(sums[0].item(), sums[1].item())
