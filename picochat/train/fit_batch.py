"""`--device-batch-size auto`: the largest micro-batch that fits, keeping the total batch by accumulation.

On CUDA a short probe decides: forward + backward at the real shape with the optimizer's state held in
reserve, halving on out-of-memory and freeing what the failed try allocated. Elsewhere the memory model
(memory.py) decides against the free host memory. Either way the micro-batch divides the rows each rank
takes per step, so `total_batch_size` is reached exactly by gradient accumulation.
"""
from __future__ import annotations

import gc
from typing import Callable

import torch

from picochat.errors import PicochatError
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.runtime import Runtime, print0
from picochat.train.memory import (available_memory, does_not_fit, estimate_memory, fit_by_memory_model, gib,
                                   micro_batch_candidates, rows_per_rank_step)


def largest_that_fits(candidates: list[int], fits: Callable[[int], bool]) -> int | None:
    """Try the largest candidate, then after each failure the largest at most half of it; None if 1 fails."""
    rows = candidates[0]
    while True:
        if fits(rows):
            return rows
        smaller = [c for c in candidates if c <= rows // 2]
        if not smaller:
            return None
        rows = smaller[0]


def probe_fits(model: GPT, rows: int, seq_len: int, reserve_bytes: int) -> bool:
    """One forward + backward of `rows` x `seq_len` on the model's CUDA device; False on out-of-memory."""
    device = model.lm_head.weight.device
    held = []
    try:
        held.append(torch.empty(reserve_bytes, dtype=torch.uint8, device=device))  # the optimizer's future state
        idx = torch.randint(0, model.config.vocab_size, (rows, seq_len), device=device)
        held.append(idx)
        model(idx, idx).backward()
        torch.cuda.synchronize(device)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        held.clear()
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()


def probe_cuda(shape: GPTConfig, candidates: list[int], seq_len: int, runtime: Runtime) -> int | None:
    torch.manual_seed(0)
    model = GPT(shape, runtime.dtype).to(runtime.device)
    model.init_weights()
    reserve = estimate_memory(shape, 1, seq_len, runtime.dtype, runtime.world_size).optimizer
    try:
        return largest_that_fits(candidates, lambda rows: probe_fits(model, rows, seq_len, reserve))
    finally:
        del model
        gc.collect()
        torch.cuda.empty_cache()


def fit_device_batch(shape: GPTConfig, total_batch_size: int, seq_len: int, runtime: Runtime) -> int:
    """The micro-batch `--device-batch-size auto` resolves to on this device (module docstring)."""
    rows = rows_per_rank_step(total_batch_size, seq_len, runtime.world_size)
    free = available_memory(runtime.device)
    if runtime.device.type != "cuda":
        chosen = fit_by_memory_model(shape, total_batch_size, seq_len, runtime.dtype, runtime.world_size, free)
        estimate = estimate_memory(shape, chosen, seq_len, runtime.dtype, runtime.world_size)
        print0(f"--device-batch-size auto: {chosen} rows (memory model: {gib(estimate.total)} of {gib(free)} free; "
               f"{rows // chosen} accumulation steps keep {total_batch_size:,} tokens per step)")
        return chosen
    chosen = probe_cuda(shape, micro_batch_candidates(rows), seq_len, runtime)
    if chosen is None:
        raise does_not_fit(shape, seq_len, runtime.dtype, runtime.world_size, free)
    print0(f"--device-batch-size auto: {chosen} rows (probed forward + backward on {runtime.device}; "
           f"{rows // chosen} accumulation steps keep {total_batch_size:,} tokens per step)")
    return chosen


def out_of_memory_advice(device_batch_size: int, step: int) -> PicochatError:
    """What to lower, by how much, when a step runs out of device memory mid-run."""
    if device_batch_size == 1:
        return PicochatError(f"out of device memory at step {step} with --device-batch-size 1; lower --max-seq-len "
                             f"or --depth (`picochat plan --memory` shows where the memory goes)")
    return PicochatError(f"out of device memory at step {step} with --device-batch-size {device_batch_size}; lower it "
                         f"to {device_batch_size // 2} (gradient accumulation keeps the total batch) or pass "
                         f"--device-batch-size auto (the checkpoints so far are kept)")
