"""Model and optimizer for a resolved TrainConfig: built on the meta device, FP8, compile."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil

import torch
from torch import nn

from picochat.errors import PicochatError
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.optim.setup import OptimHParams, build_optimizer
from picochat.runtime import Runtime
from picochat.train.config import LR_FIELDS, TrainConfig


def model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(depth=cfg.depth, vocab_size=vocab_size, aspect_ratio=cfg.aspect_ratio, head_dim=cfg.head_dim,
                     n_kv_heads=cfg.n_kv_heads, max_seq_len=cfg.max_seq_len, window_pattern=cfg.window_pattern,
                     smear=cfg.smear, backout=cfg.backout)


# torch.compile on a CPU (benchmarks/RESULTS.md, d4 at 16 x 512 tokens/step): +9% tok/s once compiled, for ~36 s of
# compiling, so it pays back after ~7 minutes of training. Runs estimated to train at least this long compile.
CPU_COMPILE_MIN_SECONDS = 600
ASSUMED_CPU_MFU = 0.35  # what eager d4 reached against the machine's measured matmul peak (30-40%)


def default_compile(device_type: str, training_flops: float, peak_flops: float | None) -> bool:
    """Compile on CUDA always; on a CPU when the run is long enough for the compile to pay for itself and
    Inductor has the C++ compiler it builds CPU kernels with."""
    if device_type == "cuda":
        return True
    if device_type == "cpu" and peak_flops and cpp_compiler_found():
        return training_flops / (peak_flops * ASSUMED_CPU_MFU) >= CPU_COMPILE_MIN_SECONDS
    return False


def cpp_compiler_found() -> bool:
    return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if name)


def build_model(config: GPTConfig, runtime: Runtime) -> GPT:
    with torch.device("meta"):
        model = GPT(config, runtime.dtype)
    model.to_empty(device=runtime.device)
    model.init_weights()
    return model


def make_optimizer(model: GPT, cfg: TrainConfig, runtime: Runtime) -> torch.optim.Optimizer:
    """MuonAdamW with the config's learning rates, which are final (the plan already scaled them
    by width and by √batch), so they replace the optimizer's own width-scaled defaults. The smear/backout
    scalars keep the optimizer's fixed LR (nanochat scales it by neither)."""
    muon_dtype = torch.bfloat16 if runtime.dtype == torch.bfloat16 else torch.float32
    hparams = OptimHParams(weight_decay=cfg.weight_decay, muon_eq=cfg.muon_eq, muon_plus=cfg.muon_plus,
                           normuon=cfg.normuon)
    optimizer = build_optimizer(model.param_groups(), hparams, model.config.width, muon_dtype)
    for group in optimizer.param_groups:
        base = "matrix" if group["kind"] == "muon" else group["name"]
        if base in LR_FIELDS:
            group["lr"] = group["initial_lr"] = getattr(cfg, LR_FIELDS[base])
    return optimizer


# -- FP8 (nanochat dev/LOG.md: Hopper only, compile mandatory, off for evaluation) ------------------------

def check_fp8(runtime: Runtime, compile_model: bool) -> None:
    """Refuse --fp8 where it cannot work, before any compute."""
    if runtime.device.type != "cuda" or torch.cuda.get_device_capability(runtime.device) < (9, 0):
        raise PicochatError(f"--fp8 needs a Hopper GPU (SM 90+, e.g. H100); this run is on {runtime.describe()['device_name']}")
    if not compile_model:
        raise PicochatError("--fp8 needs --compile: without it FP8 is ~4x slower from unfused scaling ops")
    if importlib.util.find_spec("torchao") is None:
        raise PicochatError("--fp8 uses torchao's float8 training: pip install torchao (or drop --fp8)")


def _fp8_eligible(module: nn.Module, fqn: str) -> bool:
    """Linears whose dims divide by 16 (fp8 tensor-core tiles) and are >= 128 (smaller ones lose to the scaling)."""
    return isinstance(module, nn.Linear) and all(d % 16 == 0 and d >= 128 for d in module.weight.shape)


def convert_to_fp8(model: GPT) -> dict[nn.Module, type]:
    """Swap eligible Linears to torchao's Float8Linear; returns {module: original class} for `fp8_off`."""
    from torchao.float8 import convert_to_float8_training  # noqa: PLC0415  (optional, checked by check_fp8)
    originals = {m: type(m) for name, m in model.named_modules() if _fp8_eligible(m, name)}
    names = {m: name for name, m in model.named_modules()}
    convert_to_float8_training(model, module_filter_fn=_fp8_eligible)
    return {dict(model.named_modules())[names[m]]: cls for m, cls in originals.items()}


@contextlib.contextmanager
def fp8_off(converted: dict[nn.Module, type]):
    """Evaluate and sample in the compute dtype: FP8 modules temporarily run as their original
    Linear class (same weights, no copy, so no memory spike)."""
    swapped = {m: type(m) for m in converted}
    for module, original in converted.items():
        module.__class__ = original
    try:
        yield
    finally:
        for module, fp8_class in swapped.items():
            module.__class__ = fp8_class
