"""The runtime, set once at start: device, compute dtype, rank and world size.

Everything else in picochat receives a `Runtime` (or reads the process group torch
already holds); nothing touches CUDA or the environment at import time.
"""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from picochat.errors import PicochatError
from picochat.hardware import cpu_has_native_bf16

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: the name PICOCHAT_DTYPE takes and runs record."""
    return str(dtype).removeprefix("torch.")


class RuntimeConfigError(PicochatError):
    """A runtime setting (device, dtype, distributed environment) that cannot be honoured."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device_type(self) -> str:
        return self.device.type

    def describe(self) -> dict:
        return {
            "device": str(self.device),
            "device_name": device_name(self.device),
            "dtype": dtype_name(self.dtype),
            "rank": self.rank,
            "world_size": self.world_size,
        }


def autodetect_device_type() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def compute_dtype(device: torch.device, override: str | None = None, inference: bool = False) -> torch.dtype:
    """bf16 on CUDA with SM >= 80, fp32 elsewhere; `PICOCHAT_DTYPE` overrides (no autocast: nanochat dev/LOG.md
    2026-03-04).

    `inference` (chat, serve, the inference benchmark): also bf16 on a CPU that multiplies bf16 natively. Decoding
    reads every weight once per step, so half the bytes is the larger win, and such a CPU's bf16 matmuls are the
    faster ones: on a 2-core Zen 4, a d12's decode step took 36 / 90 ms at batch 1 / 32 in bf16 against 42 / 144 ms
    in fp32 (benchmarks/RESULTS.md). Training and evaluation keep fp32 on a CPU, so their numbers compare."""
    name = override if override is not None else os.environ.get("PICOCHAT_DTYPE")
    if name:
        if name not in DTYPES:
            raise RuntimeConfigError(
                f"PICOCHAT_DTYPE={name!r} is not a dtype picochat knows; use one of {', '.join(DTYPES)}"
            )
        return DTYPES[name]
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    if inference and device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _torchrun_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment, or a single process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 0, 1
    try:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    except ValueError as e:
        raise RuntimeConfigError(f"torchrun's RANK/LOCAL_RANK/WORLD_SIZE are not integers: {e}") from e


def init_runtime(device: str | None = None, seed: int | None = 0, inference: bool = False) -> Runtime:
    """Pick the device and dtype (`inference`: compute_dtype's rule for a model that only infers), join the
    process group when launched by torchrun, seed."""
    rank, local_rank, world_size = _torchrun_env()
    device_type = device or autodetect_device_type()
    if device_type not in ("cuda", "mps", "cpu"):
        raise RuntimeConfigError(f"--device {device_type!r} is not known; use cuda, mps or cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device(device_type)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if device_type == "cuda" else None)
    dtype = compute_dtype(dev, inference=inference)
    runtime = Runtime(device=dev, dtype=dtype, rank=rank, local_rank=local_rank, world_size=world_size)
    if seed is not None:
        seed_everything(seed)
    return runtime


def shutdown_runtime() -> None:
    """Leave the process group together: a rank tearing gloo down while its peer is still
    connected can abort the process ("terminate called without an active exception").
    When called from a `finally` with an exception in flight, skip the barrier: the peers
    may never reach it."""
    if dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def current_rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def print0(*args, **kwargs) -> None:
    """print on rank 0 only, so a K-process run prints each line once."""
    if current_rank() == 0:
        print(*args, **kwargs, flush=True)


def picochat_home() -> Path:
    """Where datasets, tokenizers and runs live: $PICOCHAT_HOME, default ~/.cache/picochat."""
    home = os.environ.get("PICOCHAT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "picochat"


def datasets_dir() -> Path:
    return picochat_home() / "datasets"


def tokenizers_dir() -> Path:
    return picochat_home() / "tokenizers"


def runs_dir() -> Path:
    return picochat_home() / "runs"
