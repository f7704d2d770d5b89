"""Model FLOPs utilisation: the peak to divide by, and why MFU is low when it is (nanochat dev/LOG.md: healthy training is above 40%).

MFU = flops_per_token x tokens/s / (peak x devices). GPU peaks come from the datasheet
table (always the bf16 dense peak, also under fp8, as nanochat reports it); on CPU there is
no datasheet, so the peak is an fp32 matmul measured once per machine and kept, with the date,
in $PICOCHAT_HOME/hardware/cpu_peak.json: measured at every start it would move with whatever
else loads the machine that minute, and runs on different days could not be compared.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import torch
import torch.distributed as dist

from picochat import hardware
from picochat.runtime import picochat_home

HEALTHY_MFU = 0.40  # nanochat dev/LOG.md: train/mfu should be above 40%
CPU_PEAK_MATMUL = 2048  # large enough to run at the BLAS kernel's speed, about a second on 2 cores


def gpu_peak_flops(device_name: str) -> float | None:
    """The datasheet bf16 peak (picochat/hardware.py's table; MFU is against bf16 also under fp8)."""
    return hardware.peak_flops(device_name, "bfloat16")


@functools.cache  # once per process: the CPU's peak does not change between runs
def measure_matmul_flops(device: torch.device | str = "cpu", size: int = 1024, repeats: int = 3,
                         dtype: torch.dtype = torch.float32) -> float:
    """The best of `repeats` timed size x size matmuls, in FLOP/s (2·n³ per matmul)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        start = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def cpu_peak_file() -> Path:
    return picochat_home() / "hardware" / "cpu_peak.json"


def cpu_machine_key() -> str:
    """What the measured peak depends on: the host, its processor, the threads torch uses, torch's build."""
    return f"{platform.node()}|{platform.processor() or platform.machine()}|{torch.get_num_threads()} threads|" \
           f"torch {torch.__version__}"


def cpu_peak_flops() -> tuple[float, str]:
    """The fp32 matmul peak of this machine, measured on first use and then read from cpu_peak_file()."""
    path, key = cpu_peak_file(), cpu_machine_key()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = {"flops": measure_matmul_flops("cpu", CPU_PEAK_MATMUL, repeats=5),
                      "measured": date.today().isoformat(), "matmul": CPU_PEAK_MATMUL}
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known, indent=1) + "\n")
        temporary.replace(path)  # atomic: ranks and runs starting together never read half a file
    entry = known[key]
    return entry["flops"], (f"fp32 {entry['matmul']}² matmul measured on {entry['measured']}, kept in {path} "
                            f"(delete it to measure again)")


def peak_flops(device: torch.device, device_name: str) -> tuple[float, str]:
    """(peak FLOP/s per device, where it came from)."""
    if device.type == "cuda":
        peak = gpu_peak_flops(device_name)
        if peak is not None:
            return peak, f"datasheet bf16 peak of {device_name}"
        return measure_matmul_flops(device, 8192, dtype=torch.bfloat16), f"measured bf16 matmul on {device_name}"
    if device.type == "cpu":
        return cpu_peak_flops()
    return measure_matmul_flops(device), f"measured fp32 matmul on {device.type}"


def cpu_rate_fields(device: torch.device, tokens_per_sec: float, peak: float) -> dict:
    """On a CPU, tok/s per GFLOP/s of the machine's kept peak: a rate that compares runs across days and
    machines (MFU hides it behind the model's FLOPs per token). Nothing on accelerators."""
    return {"tok_per_peak_gflop": tokens_per_sec / (peak / 1e9)} if device.type == "cpu" else {}


def diagnose_low_mfu(mfu: float, data_wait_fraction: float, memory_used: float, memory_total: float,
                     collective_fraction: float, device_batch_size: int) -> list[str]:
    """Reasons, with their numbers, for an MFU under 40%; empty when MFU is healthy."""
    if mfu >= HEALTHY_MFU:
        return []
    reasons = [f"MFU {100 * mfu:.1f}% is under {100 * HEALTHY_MFU:.0f}%; measured:"]
    reasons.append(f"  waiting for data: {100 * data_wait_fraction:.1f}% of step time"
                   + (" (the loader is a bottleneck)" if data_wait_fraction > 0.05 else ""))
    used = memory_used / memory_total if memory_total else 0.0
    line = f"  device memory in use: {memory_used / 2**30:.1f} of {memory_total / 2**30:.1f} GiB ({100 * used:.0f}%)"
    if used < 0.5:
        line += f"; the micro-batch is small for this device: try --device-batch-size {2 * device_batch_size}"
    reasons.append(line)
    reasons.append(f"  collectives: about {100 * collective_fraction:.1f}% of step time"
                   + (" (communication-bound: fewer, larger steps help)" if collective_fraction > 0.1 else ""))
    return reasons


def measure_collective_seconds(numel: int, device: torch.device, dtype: torch.dtype) -> float:
    """Time one all-reduce of a gradient-sized buffer: the communication a step cannot avoid."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0.0
    buffer = torch.zeros(numel, device=device, dtype=dtype)
    dist.all_reduce(buffer)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    dist.all_reduce(buffer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


class MfuHealthCheck:
    """On GPUs, averages MFU and data-wait over the steps after the first (compile) one and, at
    `at_step`, says why MFU is under 40% if it is. Every rank calls it at the same
    step, so the collective timing inside is safe."""

    def __init__(self, enabled: bool, at_step: int, device: torch.device, grad_numel: int, device_batch_size: int):
        self.enabled, self.at_step, self.device = enabled, at_step, device
        self.grad_numel, self.device_batch_size = grad_numel, device_batch_size
        self.seconds = self.data_wait = self.mfu_sum = 0.0
        self.observed = self.steps = 0

    def observe(self, step: int, seconds: float, data_wait: float, mfu: float) -> list[str]:
        self.observed += 1
        if not self.enabled or self.observed == 1 or step > self.at_step:  # the first step compiles
            return []
        self.seconds += seconds
        self.data_wait += data_wait
        self.mfu_sum += mfu
        self.steps += 1
        if step != self.at_step:
            return []
        step_seconds = self.seconds / self.steps
        collective = measure_collective_seconds(self.grad_numel, self.device, torch.bfloat16)
        props = torch.cuda.get_device_properties(self.device)
        return diagnose_low_mfu(self.mfu_sum / self.steps, self.data_wait / self.seconds,
                                torch.cuda.max_memory_allocated(self.device), props.total_memory,
                                collective / step_seconds, self.device_batch_size)
