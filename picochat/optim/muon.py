"""Muon's tensor math, pure: momentum, orthogonalisation, shape-aware LR, cautious decay.

Muon (Keller Jordan, modded-nanogpt) replaces a matrix's update by the nearest
semi-orthogonal matrix U·Vᵀ of its momentum, computed with a few matrix
polynomials instead of an SVD. Every function here accepts a single matrix
[rows, cols] or a stack of same-shaped matrices [..., rows, cols].

Three optional refinements, each off by default, in the order nanochat applies them
(github.com/karpathy/nanochat, nanochat/optim.py, muon_step_fused):
  momentum → MuonEq row equilibration → orthogonalise → Muon+ renormalisation → NorMuon.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Polar Express (Amsel et al., arXiv 2505.16932): one odd quintic a·x + b·x³ + c·x⁵ per
# iteration, each optimal for the spectrum left by the previous one. Five-step list with
# the 2% safety margin, as published in modded-nanogpt and used by nanochat.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# Scale the input just below norm 1 so every singular value starts inside (0, 1],
# where the polynomials are designed to work (Polar Express §4, safety factor 1.01).
NORM_SAFETY = 1.01


def orthogonalize(G: Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> Tensor:
    """≈ U·Vᵀ for G = U·S·Vᵀ: every singular value pushed to ~1. Returns `dtype`.

    Use bf16 on CUDA bf16 runs (the iteration is robust to it, and it halves the matmul
    cost), fp32 elsewhere. Iterations past the fifth reuse the last coefficients.
    """
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:  # work on the short side: X·Xᵀ is then the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * NORM_SAFETY + 1e-7)
    for i in range(steps):
        a, b, c = POLAR_EXPRESS_COEFFS[min(i, len(POLAR_EXPRESS_COEFFS) - 1)]
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


def nesterov_momentum(grad: Tensor, momentum_buffer: Tensor, beta, nesterov: bool = True) -> Tensor:
    """Update the buffer in place (buf ← β·buf + (1−β)·g) and return the direction to orthogonalise."""
    momentum_buffer.lerp_(grad, 1 - beta)
    return grad.lerp(momentum_buffer, beta) if nesterov else momentum_buffer


def equilibrate_rows(X: Tensor) -> Tensor:
    """MuonEq (arXiv 2603.28254): every row rescaled to the mean row norm ‖X‖_F/√rows, so
    no row dominates the spectrum the polynomials must flatten."""
    target = X.norm(dim=(-2, -1), keepdim=True) / X.size(-2) ** 0.5
    return X * (target / X.norm(dim=-1, keepdim=True).clamp_min(1e-6))


def renormalize_frobenius(O: Tensor) -> Tensor:
    """Muon+ (arXiv 2602.21545): snap ‖O‖_F to √min(rows, cols), the norm of an exactly
    semi-orthogonal matrix, undoing the polynomials' under- or over-shoot. Returns fp32."""
    O = O.float()
    target = min(O.size(-2), O.size(-1)) ** 0.5
    return O * (target / O.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6))


def neuron_axis(shape: torch.Size) -> int:
    """The axis NorMuon averages over: columns when rows ≥ cols (one statistic per row),
    rows otherwise (one per column), i.e. the statistic lives on the longer side."""
    return -1 if shape[-2] >= shape[-1] else -2


def neuron_second_moment(updates: Tensor) -> Tensor:
    """A zero NorMuon state for `updates` [..., rows, cols]: [..., rows, 1] or [..., 1, cols], fp32."""
    shape = list(updates.shape)
    shape[neuron_axis(updates.shape)] = 1
    return torch.zeros(shape, dtype=torch.float32, device=updates.device)


def neuron_normalize(O: Tensor, second_moment: Tensor, beta2) -> Tensor:
    """NorMuon (Li et al., arXiv 2510.05491): divide each neuron of the orthogonalised update by
    the root of its running mean square (v ← β₂·v + (1−β₂)·mean(O²), in place), then rescale to
    ‖O‖_F so the LR keeps its meaning. Returns fp32.

    The statistic is factored on the longer side (`neuron_axis`) and the rescale preserves the
    norm, as nanochat does; the paper keeps one per output row and rescales to 0.2·√(rows·cols).
    No bias correction: v starts at zero for every neuron alike, and the rescale cancels a common factor.
    """
    O = O.float()
    second_moment.lerp_(O.square().mean(dim=neuron_axis(O.shape), keepdim=True), 1 - beta2)
    normalized = O * second_moment.clamp_min(1e-10).rsqrt()
    scale = O.norm(dim=(-2, -1), keepdim=True) / normalized.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10)
    return normalized * scale


def muon_update(grad: Tensor, momentum_buffer: Tensor, beta, nesterov: bool = True,
                steps: int = 5, dtype: torch.dtype = torch.float32, equilibrate: bool = False,
                renormalize: bool = False, second_moment: Tensor | None = None, beta2=0.9) -> Tensor:
    """Muon's update direction for `grad` (not yet scaled by the LR); updates the buffers in place.

    `equilibrate` turns on MuonEq, `renormalize` Muon+, and a `second_moment` buffer
    (from `neuron_second_moment`) NorMuon with decay `beta2`. With all three off this is plain Muon.
    """
    direction = nesterov_momentum(grad, momentum_buffer, beta, nesterov)
    if equilibrate:
        direction = equilibrate_rows(direction)
    update = orthogonalize(direction, steps, dtype)
    if renormalize:
        update = renormalize_frobenius(update)
    if second_moment is not None:
        update = neuron_normalize(update, second_moment, beta2)
    return update


def shape_lr_scale(shape: torch.Size) -> float:
    """max(1, rows/cols)^0.5: an orthogonal update of a tall matrix has a smaller RMS, so
    its LR is raised to keep the per-entry step comparable (modded-nanogpt / nanochat)."""
    rows, cols = shape[-2], shape[-1]
    return max(1.0, rows / cols) ** 0.5


def cautious_weight_decay_step(p: Tensor, update: Tensor, lr, weight_decay) -> None:
    """p ← p − lr·(update + wd·p·mask), mask = (update·p ≥ 0), in place.

    Sign convention: `update` is the direction *subtracted* from p. Where update and p
    share a sign, the step already moves p toward zero and decay joins in; where they
    disagree, the optimiser wants |p| to grow, so decay (which would fight it) is skipped.
    Cautious weight decay: Chen et al. 2025, as used by nanochat (mask g·p ≥ 0).
    """
    update = update.to(p.dtype)
    mask = (update * p) >= 0
    p.sub_(lr * (update + weight_decay * p * mask))
