"""One optimizer step, shared by pretraining, SFT and RL: accumulate, check, step.

Gradient accumulation makes `device_batch_size` a memory knob only: each micro-batch's
loss is divided by the number of micro-batches, so the summed gradient is the mean over
the whole total batch, and the optimizer averages it over ranks itself (no DDP wrapper).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (SUM then divide: gloo has no AVG)."""
    if _distributed():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / dist.get_world_size()
    return value


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over ranks (one collective for the lot)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if _distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on any rank (all-reduce MAX)."""
    value = torch.tensor(float(flag), device=device)
    if _distributed():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class GradScaler:
    """Loss scaling for fp16, synchronised across ranks (an inf on one rank must skip the step on all, or they diverge).

    The found-inf flag is all-reduced with MAX before deciding, so when one rank overflows
    every rank skips the same step and the replicas never diverge. Disabled (scale 1, no
    checks, no collectives) for bf16 and fp32.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = init_scale if enabled else 1.0
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.good_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale_and_check(self, params: list[torch.Tensor]) -> bool:
        """Divide the grads by the scale; True (on every rank) when any rank has a non-finite grad."""
        if not self.enabled:
            return False
        grads = [p.grad for p in params if p.grad is not None]
        found = torch.zeros((), device=grads[0].device) if grads else torch.zeros(())
        for grad in grads:
            grad.div_(self.scale)
            found = torch.maximum(found, (~torch.isfinite(grad)).any().float())
        return any_rank(bool(found.item()), found.device)

    def update(self, found_inf: bool) -> None:
        if not self.enabled:
            return
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = state["scale"], state["good_steps"]


@dataclass
class StepResult:
    loss: float  # mean over the micro-batches and the ranks
    data_wait: float  # seconds this rank waited for batches
    skipped: bool  # an fp16 overflow made every rank skip the update


def next_token_loss(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    """Pretraining's and SFT's objective: mean cross-entropy over the targets that are not -1."""
    inputs, targets = batch
    return model(inputs, targets)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator,
               grad_accum_steps: int, scaler: GradScaler, loss_fn: Callable = next_token_loss) -> StepResult:
    """`loss_fn(model, batch)` turns one micro-batch into a scalar loss (RL passes its policy-gradient loss)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss_sum, data_wait = None, 0.0
    for _ in range(grad_accum_steps):
        start = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - start
        loss = loss_fn(model, batch)
        scaler.scale_loss(loss / grad_accum_steps).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    skipped = scaler.unscale_and_check(params)
    if not skipped:
        optimizer.step()
    scaler.update(skipped)
    model.zero_grad(set_to_none=True)
    mean_loss = all_reduce_mean(loss_sum / grad_accum_steps)
    return StepResult(loss=mean_loss.item(), data_wait=data_wait, skipped=skipped)
