"""One AdamW step, pure tensor math (Loshchilov & Hutter, decoupled weight decay).

Every hyperparameter may be a float or a 0-D tensor; MuonAdamW passes 0-D tensors so a
torch.compile'd caller sees the same graph whatever the schedule does (nanochat dev/LOG.md: a scalar passed as an argument recompiles on every schedule change).
Written as a handful of elementwise ops so a compiler can fuse it into one kernel.
"""
from __future__ import annotations

from torch import Tensor


def adamw_step(p: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step,
               lr, beta1, beta2, eps, weight_decay) -> None:
    """Update p, exp_avg and exp_avg_sq in place; `step` counts from 1 (bias correction)."""
    grad = grad.to(exp_avg.dtype)
    p.mul_(1 - lr * weight_decay)  # decoupled: decay the weight, not the gradient
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    bias1 = 1 - beta1 ** step
    bias2 = 1 - beta2 ** step
    denom = (exp_avg_sq / bias2).sqrt() + eps
    p.sub_((lr / bias1) * (exp_avg / denom).to(p.dtype))
