"""How much memory training needs, from the shapes alone, and the largest micro-batch that fits.

The model of one rank's peak, in bytes:
- weights: every parameter's fp32 master (the `Linear`s), embeddings in their own dtype (gpt.py);
- gradients: the same again;
- optimizer: AdamW's two fp32 moments for the embeddings, lm_head and scalars; Muon's fp32 momentum for the
  block matrices, sharded over ranks, plus the stacked copy of the matrix gradients each step makes;
- activations: what autograd saves per token: per layer ACTIVATION_WIDTHS x width values in the compute dtype
  and ACTIVATION_FP32_WIDTHS x width in fp32 (fitted to the bytes autograd saves in eager mode at several
  widths, depths and vocabularies, fp32 and bf16: within 10%, tests/test_memory.py); per token of the loss the
  fp32 capped logits, and in the backward the logits' gradient in the compute dtype and fp32; below fp32, the
  compute-dtype copies of the weights each matmul keeps. torch.compile saves less, so the model errs safe there.
The largest micro-batch that fits is a divisor of the rows each rank takes per step, so gradient
accumulation keeps the total batch; on CUDA a probe at the real shape (fit_batch.py) has the last word.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from picochat.errors import PicochatError
from picochat.model.accounting import parameter_counts
from picochat.model.config import GPTConfig

ACTIVATION_WIDTHS = 16  # saved values per token per layer, in units of width, in the compute dtype
ACTIVATION_FP32_WIDTHS = 5  # and in fp32 whatever the compute dtype (fitted: see the module docstring)
HEADROOM = 0.85  # of the free memory: the allocator's fragmentation and the runtime's own buffers
FP32 = 4
ADAMW_GROUPS = ("embedding", "value_embedding", "lm_head", "resid_lambda", "x0_lambda", "smear_backout")


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def lines(self) -> list[str]:
        return [f"  {name:<12} {gib(value):>9}" for name, value in (
            ("weights", self.weights), ("gradients", self.gradients), ("optimizer", self.optimizer),
            ("activations", self.activations), ("total", self.total))]


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def itemsize(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def saved_bytes_per_token(cfg: GPTConfig, dtype: torch.dtype) -> int:
    """What autograd keeps per token for the backward: each layer's activations and the fp32 capped logits."""
    layers = cfg.n_layers * cfg.width * (ACTIVATION_WIDTHS * itemsize(dtype) + ACTIVATION_FP32_WIDTHS * FP32)
    return layers + cfg.vocab_size * FP32


def activation_bytes_per_token(cfg: GPTConfig, dtype: torch.dtype) -> int:
    """The saved bytes plus the loss's backward transient: the logits' gradient in the compute dtype and fp32."""
    return saved_bytes_per_token(cfg, dtype) + cfg.vocab_size * (itemsize(dtype) + FP32)


def weight_casts(cfg: GPTConfig, dtype: torch.dtype) -> int:
    """Below fp32 each `Linear` casts its fp32 master to the compute dtype, and autograd keeps the copy."""
    if dtype == torch.float32:
        return 0
    counts = parameter_counts(cfg)
    return (counts["matrix"] + counts["lm_head"]) * itemsize(dtype)


def estimate_memory(cfg: GPTConfig, device_batch_size: int, seq_len: int, dtype: torch.dtype,
                    world_size: int = 1) -> MemoryEstimate:
    counts = parameter_counts(cfg)
    embed_bytes = FP32 if dtype == torch.float16 else itemsize(dtype)  # embeddings: gpt.py's embed_dtype
    embeddings = counts["embedding"] + counts["value_embedding"]
    weights = (counts["total"] - embeddings) * FP32 + embeddings * embed_bytes
    adamw = sum(counts.get(group, 0) for group in ADAMW_GROUPS)
    optimizer = 2 * adamw * FP32 + counts["matrix"] * FP32 // world_size + counts["matrix"] * FP32
    activations = device_batch_size * seq_len * activation_bytes_per_token(cfg, dtype) + weight_casts(cfg, dtype)
    return MemoryEstimate(weights, weights, optimizer, activations)


def rows_per_rank_step(total_batch_size: int, seq_len: int, world_size: int) -> int:
    rows, remainder = divmod(total_batch_size, seq_len * world_size)
    if remainder or rows == 0:
        raise PicochatError(f"--total-batch-size {total_batch_size} is not a multiple of max_seq_len x world_size = "
                            f"{seq_len} x {world_size}; use a multiple of {seq_len * world_size}")
    return rows


def micro_batch_candidates(rows: int) -> list[int]:
    """Divisors of the rows a rank takes per step, largest first: each keeps the total batch exactly."""
    return [b for b in range(rows, 0, -1) if rows % b == 0]


def available_memory(device: torch.device) -> int:
    """Free bytes on the device: CUDA's free memory, or the host's MemAvailable (/proc/meminfo)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def does_not_fit(cfg: GPTConfig, seq_len: int, dtype: torch.dtype, world_size: int, budget: int) -> PicochatError:
    one_row = estimate_memory(cfg, 1, seq_len, dtype, world_size)
    return PicochatError(
        f"even 1 row of {seq_len} tokens needs about {gib(one_row.total)} (weights {gib(one_row.weights)}, "
        f"optimizer {gib(one_row.optimizer)}, activations {gib(one_row.activations)}) and the device has "
        f"{gib(budget)} to spare; lower --depth or --max-seq-len, or use more devices")


def fit_by_memory_model(cfg: GPTConfig, total_batch_size: int, seq_len: int, dtype: torch.dtype, world_size: int,
                        free_bytes: int) -> int:
    """The largest micro-batch (a divisor of the rows per rank per step) whose estimate fits `free_bytes`."""
    budget = int(HEADROOM * free_bytes)
    for rows in micro_batch_candidates(rows_per_rank_step(total_batch_size, seq_len, world_size)):
        if estimate_memory(cfg, rows, seq_len, dtype, world_size).total <= budget:
            return rows
    raise does_not_fit(cfg, seq_len, dtype, world_size, budget)
