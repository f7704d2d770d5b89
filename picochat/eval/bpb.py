"""Bits per byte: the loss in a unit that does not depend on the tokenizer.

Summed nats over target tokens, divided by ln 2 and by the UTF-8 bytes those targets
stand for (as nanochat's loss_eval.py: special tokens count zero bytes and are left out),
so runs with different vocabularies compare fairly.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from picochat.data.loader import PackedLoader
from picochat.errors import PicochatError


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
    distributed = dist.is_available() and dist.is_initialized()
    if nats_sum is None and not distributed:
        raise ValueError("evaluate_bpb got no batches")
    if nats_sum is None:  # a small split can leave a rank without rows; it still joins the sum
        nats_sum = bytes_sum = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    sums = torch.stack([nats_sum, bytes_sum])
    if distributed:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return bits_per_byte(sums[0].item(), sums[1].item())


# --- a dataset split, scored the same way at every evaluation ---------------------------------

@dataclass(frozen=True)
class BpbResult:
    bpb: float
    tokens: int  # target tokens scored, over all ranks
    whole_split: bool  # the split was smaller than the budget: every token of it scored once

    def describe(self, split: str) -> str:
        return f"{self.tokens:,} tokens ({'the whole ' + split + ' split' if self.whole_split else 'budget'})"


def split_stream_within(dataset, tokenizer, split: str, budget: int) -> np.ndarray | None:
    """The split's documents ([BOS] + tokens each) as one stream, when it holds at most `budget` + 1 tokens."""
    parts, total = [], 0
    for text in dataset.iter_documents(split):
        parts.append(tokenizer.encode(text, prepend_bos=True))
        total += len(parts[-1])
        if total > budget + 1:
            return None
    if not parts:
        raise PicochatError(f"dataset {dataset.name!r} has no {split} documents; rebuild it from at least 2 "
                            f"documents so that each split gets one, or use another dataset")
    return np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64, count=total)


def stream_batches(stream: np.ndarray, batch_size: int, seq_len: int, rank: int, world_size: int,
                   device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Rows of seq_len targets with stride seq_len, so every token after the first is a target exactly once;
    the last row is padded with ignored targets. Row i goes to rank i % world_size."""
    starts = range(0, len(stream) - 1, seq_len)[rank::world_size]
    for first in range(0, len(starts), batch_size):
        rows = np.full((len(starts[first:first + batch_size]), seq_len + 1), -1, dtype=np.int64)
        for row, start in zip(rows, starts[first:first + batch_size]):
            chunk = stream[start:start + seq_len + 1]
            row[:len(chunk)] = chunk
        inputs = torch.from_numpy(np.where(rows[:, :-1] < 0, 0, rows[:, :-1])).to(device)
        yield inputs, torch.from_numpy(rows[:, 1:]).to(device)


class SplitBpb:
    """bpb on a dataset split, over the same tokens at every call: the whole split once when it holds no more
    than `budget` tokens (cycling a small split to fill the budget costs time and adds nothing), else the
    first `budget` tokens as the training loader packs them."""

    def __init__(self, dataset, tokenizer, split: str, batch_size: int, seq_len: int, budget: int,
                 rank: int = 0, world_size: int = 1, device="cpu", mode: str = "bestfit"):
        self.dataset, self.tokenizer, self.split, self.mode = dataset, tokenizer, split, mode
        self.batch_size, self.seq_len, self.rank, self.world_size, self.device = batch_size, seq_len, rank, world_size, device
        self.stream = split_stream_within(dataset, tokenizer, split, budget)
        self.steps = max(1, budget // (batch_size * seq_len * world_size))
        self.token_bytes = tokenizer.token_bytes()

    def __call__(self, model) -> BpbResult:
        if self.stream is not None:
            batches = stream_batches(self.stream, self.batch_size, self.seq_len, self.rank, self.world_size, self.device)
            return BpbResult(evaluate_bpb(model, batches, self.token_bytes), len(self.stream) - 1, True)
        with PackedLoader(self.dataset, self.tokenizer, self.split, self.batch_size, self.seq_len, rank=self.rank,
                          world_size=self.world_size, mode=self.mode, device=self.device, background=False) as loader:
            bpb = evaluate_bpb(model, itertools.islice(loader, self.steps), self.token_bytes)
        return BpbResult(bpb, self.steps * self.batch_size * self.seq_len * self.world_size, False)
