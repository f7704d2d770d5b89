"""Muon + AdamW in one optimizer: pure math (muon, adamw), the optimizer, and its set-up."""
from picochat.optim.adamw import adamw_step
from picochat.optim.muon import cautious_weight_decay_step, muon_update, orthogonalize, shape_lr_scale
from picochat.optim.optimizer import MuonAdamW
from picochat.optim.setup import OptimHParams, build_optimizer

__all__ = [
    "MuonAdamW", "OptimHParams", "build_optimizer",
    "orthogonalize", "muon_update", "shape_lr_scale", "cautious_weight_decay_step", "adamw_step",
]
