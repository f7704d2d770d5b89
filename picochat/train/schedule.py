"""Schedules as pure functions of the step, and one helper that writes them into the optimizer.

Values follow nanochat (scripts/base_train.py): linear warm-up, constant, linear
warm-down over the last 65% to 5% of the LR; Muon momentum 0.85 -> 0.97 over 400 steps, then
down to 0.90 during the warm-down; Muon weight decay follows a cosine to 0 over the run.
They are written into the param-group dicts, never passed to step() (nanochat dev/LOG.md: arguments
that change every step recompile a compiled optimizer).
"""
from __future__ import annotations

import math

import torch


def warmdown_start(num_iterations: int, warmdown_ratio: float) -> int:
    return num_iterations - round(warmdown_ratio * num_iterations)


def lr_multiplier(step: int, num_iterations: int, warmup_steps: int = 40,
                  warmdown_ratio: float = 0.65, final_lr_frac: float = 0.05) -> float:
    """Linear warm-up to 1, constant, then linear warm-down to `final_lr_frac` at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    start = warmdown_start(num_iterations, warmdown_ratio)
    if step < start:
        return 1.0
    progress = (step - start) / max(num_iterations - start, 1)
    return 1.0 + progress * (final_lr_frac - 1.0)


def muon_momentum(step: int, num_iterations: int, warmdown_ratio: float = 0.65,
                  warmup_steps: int = 400, start: float = 0.85, peak: float = 0.97, final: float = 0.90) -> float:
    """0.85 -> 0.97 over the first 400 steps, then linearly to 0.90 across the warm-down."""
    momentum = start + min(step / warmup_steps, 1.0) * (peak - start)
    down = warmdown_start(num_iterations, warmdown_ratio)
    if step >= down:
        progress = (step - down) / max(num_iterations - down, 1)
        momentum = momentum + progress * (final - momentum)
    return momentum


def weight_decay_multiplier(step: int, num_iterations: int) -> float:
    """A cosine from 1 at step 0 to 0 at the last step."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step / max(num_iterations, 1), 1.0)))


def _write(group: dict, key: str, value: float) -> None:
    """Tensors are filled in place (a compiled step keeps its graph); floats are replaced."""
    if isinstance(group.get(key), torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


def apply_schedules(optimizer: torch.optim.Optimizer, step: int, num_iterations: int,
                    warmup_steps: int, warmdown_ratio: float, final_lr_frac: float) -> float:
    """Set every group's lr (and Muon's momentum and weight decay) for `step`; returns the lr multiplier.

    Base values are remembered in `initial_lr` / `initial_weight_decay` on first use, so the
    schedule is a pure function of the step (resuming needs no schedule state).
    """
    lrm = lr_multiplier(step, num_iterations, warmup_steps, warmdown_ratio, final_lr_frac)
    momentum = muon_momentum(step, num_iterations, warmdown_ratio)
    wdm = weight_decay_multiplier(step, num_iterations)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", float(group["lr"]))
        _write(group, "lr", group["initial_lr"] * lrm)
        if is_muon_group(group):
            _write(group, "momentum", momentum)
            group.setdefault("initial_weight_decay", float(group.get("weight_decay", 0.0)))
            _write(group, "weight_decay", group["initial_weight_decay"] * wdm)
    return lrm


def is_muon_group(group: dict) -> bool:
    return group.get("kind") == "muon" or group.get("use_muon", False) is True
