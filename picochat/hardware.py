"""Peak dense matmul throughput and memory bandwidth per accelerator, for MFU, time estimates and the
bandwidth utilisation of decoding, and whether a CPU multiplies bf16 natively (no torch needed).

Figures are the vendors' dense (no sparsity) tensor-core peaks, from the vendors'
datasheets: MFU is reported against the bf16 peak, also when training in fp8.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from picochat.errors import PicochatError


@dataclass(frozen=True)
class Accelerator:
    bf16_flops: float
    fp8: bool  # Hopper, Ada and Blackwell have fp8 tensor cores at twice the bf16 rate
    bandwidth: float  # datasheet peak memory bandwidth, bytes/s (HBM or GDDR)


# Matched as substrings of torch.cuda.get_device_name(), first match wins: the specific
# variants ("H100 NVL", "H100 PCIe", "L40S") come before the names they contain.
# Bandwidths from the NVIDIA datasheets; A100 is the 80 GB SXM part (the 40 GB one has 1.56 TB/s), GH200 the
# 96 GB HBM3 one (the 144 GB HBM3e one has 4.9 TB/s).
PEAK_FLOPS: dict[str, Accelerator] = {
    "H100 NVL": Accelerator(835e12, fp8=True, bandwidth=3.9e12),
    "H100 PCIe": Accelerator(756e12, fp8=True, bandwidth=2.0e12),
    "H100": Accelerator(989e12, fp8=True, bandwidth=3.35e12),  # SXM
    "H200": Accelerator(989e12, fp8=True, bandwidth=4.8e12),
    "GH200": Accelerator(989e12, fp8=True, bandwidth=4.0e12),
    "B200": Accelerator(2.25e15, fp8=True, bandwidth=8.0e12),
    "A100": Accelerator(312e12, fp8=False, bandwidth=2.039e12),
    "L40S": Accelerator(362e12, fp8=True, bandwidth=864e9),
    "L4": Accelerator(121e12, fp8=True, bandwidth=300e9),
}

# Relative to bf16: fp16 tensor cores run at the bf16 rate; fp32 matmuls run as TF32 at half of it
# (A100 156 vs 312, H100 494 vs 989 TFLOP/s dense).
DTYPE_FACTOR = {"bfloat16": 1.0, "float16": 1.0, "float32": 0.5, "float8": 2.0, "fp8": 2.0}


def find_accelerator(device_name: str) -> tuple[str, Accelerator] | None:
    for key, accelerator in PEAK_FLOPS.items():
        if key.lower() in device_name.lower():
            return key, accelerator
    return None


def peak_flops(device_name: str, dtype="bfloat16") -> float | None:
    """Peak FLOP/s of one device (a name like torch.cuda.get_device_name() gives) in `dtype`
    (a string or a torch.dtype); None for a device not in the table (CPU, MPS, unknown GPUs)."""
    found = find_accelerator(device_name)
    if found is None:
        return None
    key, accelerator = found
    dtype_name = str(dtype).removeprefix("torch.")
    if dtype_name.startswith("float8"):
        dtype_name = "float8"
    if dtype_name not in DTYPE_FACTOR:
        raise PicochatError(f"no peak FLOP/s for dtype {dtype_name!r}; known: {', '.join(DTYPE_FACTOR)}")
    if DTYPE_FACTOR[dtype_name] == 2.0 and not accelerator.fp8:
        raise PicochatError(f"{device_name} ({key}) has no fp8 tensor cores; use bfloat16")
    return accelerator.bf16_flops * DTYPE_FACTOR[dtype_name]


def peak_bandwidth(device_name: str) -> float | None:
    """Datasheet peak memory bandwidth (bytes/s) of one device; None for a device not in the table."""
    found = find_accelerator(device_name)
    return None if found is None else found[1].bandwidth


# x86 instructions that multiply bf16 natively, as Linux's /proc/cpuinfo names them: AVX512-BF16 (Cooper Lake,
# Zen 4 and later) and AMX (Sapphire Rapids and later). oneDNN runs torch's bf16 matmuls on them.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (read from /proc/cpuinfo, or `cpuinfo`; False where unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return any(flag in line.partition(":")[2].split() for flag in CPU_BF16_FLAGS)
    return False
