"""From the model's parameter groups and the optimizer hyperparameters to one MuonAdamW.

LRs, betas and decays are nanochat's (github.com/karpathy/nanochat, nanochat/optim.py and scripts/base_train.py).
The √(B / 2^19) batch-size LR scaling and the schedules (warm-up, warm-down, Muon
momentum and weight-decay ramps) are applied by the caller (the scaling plan and the
training loop, through each group's `initial_lr`), not here.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from picochat.config import field_help
from picochat.optim.optimizer import MuonAdamW
from picochat.scaling import weight_decay_for_width

MODEL_GROUPS = ("matrix", "embedding", "value_embedding", "lm_head", "resid_lambda", "x0_lambda")
# and "smear_backout", which may be absent: it holds parameters only when the model has smear or backout

# nanochat tuned its AdamW LRs at width 768 (d12); wider models take LR × (width/768)^−0.5.
REFERENCE_WIDTH = 768

# nanochat's dev/LOG.md sweeps: Muon weight decay ≈ 0.22 at d12 (width 768) and falls as 1/width². The training plan passes
# its own fitted value (picochat.scaling.SEED_WD_REF); this anchor is only the standalone default.
REFERENCE_WEIGHT_DECAY = 0.22

@dataclass
class OptimHParams:
    matrix_lr: float = field(default=0.02, metadata=field_help("Muon LR for the block matrices"))
    embedding_lr: float = field(default=0.3, metadata=field_help("AdamW LR for the token embedding (at width 768)"))
    value_embedding_lr: float = field(default=0.15, metadata=field_help("AdamW LR for value embeddings (at width 768)"))
    lm_head_lr: float = field(default=0.008, metadata=field_help("AdamW LR for the lm_head (at width 768)"))
    resid_lambda_lr: float = field(default=0.005, metadata=field_help("AdamW LR for the residual scalars"))
    x0_lambda_lr: float = field(default=0.5, metadata=field_help("AdamW LR for the x0 scalars"))
    weight_decay: float | None = field(
        default=None, metadata=field_help("Muon weight decay; derived 0.22·(768/width)² (nanochat dev/LOG.md sweeps: WD ∝ 1/width²) when not given"))
    muon_momentum: float = field(default=0.95, metadata=field_help("Muon Nesterov momentum"))
    lm_head_beta1: float = 0.8
    lm_head_beta2: float = 0.96
    lm_head_weight_decay: float = 0.01
    embedding_beta1: float = field(default=0.8, metadata=field_help("AdamW beta1 for token and value embeddings"))
    embedding_beta2: float = field(default=0.995, metadata=field_help("AdamW beta2 for token and value embeddings"))
    embedding_weight_decay: float = field(default=0.001, metadata=field_help("AdamW decay for token and value embeddings"))
    resid_lambda_beta1: float = 0.8
    resid_lambda_beta2: float = 0.95
    x0_lambda_beta1: float = field(default=0.96, metadata=field_help("nanochat dev/LOG.md d20 sweep: flat 0.90-0.96, sharp cliff at 0.98"))
    x0_lambda_beta2: float = 0.95
    # Smear's gate and λ and backout's λ (empty unless the model has them): nanochat's fixed LR 0.2, not scaled
    # by width or batch, betas (0.8, 0.95), no decay (nanochat gpt.py, setup_optimizer).
    smear_backout_lr: float = 0.2
    smear_backout_beta1: float = 0.8
    smear_backout_beta2: float = 0.95
    adam_eps: float = 1e-10
    # Muon refinements (picochat/optim/muon.py), off until the lab shows they pay at our scale.
    muon_eq: bool = field(default=False, metadata=field_help("MuonEq: equilibrate the momentum's rows before orthogonalising"))
    muon_plus: bool = field(default=False, metadata=field_help("Muon+: renormalise the orthogonal update to Frobenius norm √min(m, n)"))
    normuon: bool = field(default=False, metadata=field_help("NorMuon: normalise each neuron of the update by its running RMS (arXiv 2510.05491)"))
    normuon_beta2: float = field(default=0.9, metadata=field_help("NorMuon second-moment decay"))


def muon_weight_decay(hp: OptimHParams, width: int) -> float:
    if hp.weight_decay is not None:
        return hp.weight_decay
    return weight_decay_for_width(width, wd_ref=REFERENCE_WEIGHT_DECAY, width_ref=REFERENCE_WIDTH)


def build_optimizer(model_groups: dict[str, list[nn.Parameter]], hp: OptimHParams, width: int,
                    muon_dtype: torch.dtype = torch.float32) -> MuonAdamW:
    """`model_groups` is `GPT.param_groups()`; `muon_dtype` bf16 on CUDA bf16 runs."""
    missing = set(MODEL_GROUPS) - set(model_groups)
    if missing:
        raise ValueError(f"model param_groups() lacks {sorted(missing)}; expected keys {list(MODEL_GROUPS)}")
    width_scale = (width / REFERENCE_WIDTH) ** -0.5

    def adamw(name: str, lr: float, beta1: float, beta2: float, weight_decay: float) -> dict:
        return {"kind": "adamw", "name": name, "params": model_groups.get(name, []), "lr": lr,
                "betas": (beta1, beta2), "eps": hp.adam_eps, "weight_decay": weight_decay}

    groups = [
        adamw("embedding", hp.embedding_lr * width_scale, hp.embedding_beta1, hp.embedding_beta2,
              hp.embedding_weight_decay),
        adamw("value_embedding", hp.value_embedding_lr * width_scale, hp.embedding_beta1, hp.embedding_beta2,
              hp.embedding_weight_decay),
        adamw("lm_head", hp.lm_head_lr * width_scale, hp.lm_head_beta1, hp.lm_head_beta2, hp.lm_head_weight_decay),
        adamw("resid_lambda", hp.resid_lambda_lr, hp.resid_lambda_beta1, hp.resid_lambda_beta2, 0.0),
        adamw("x0_lambda", hp.x0_lambda_lr, hp.x0_lambda_beta1, hp.x0_lambda_beta2, 0.0),
        adamw("smear_backout", hp.smear_backout_lr, hp.smear_backout_beta1, hp.smear_backout_beta2, 0.0),
    ]
    groups += [
        {"kind": "muon", "name": f"matrix{list(shape)}", "params": params, "lr": hp.matrix_lr,
         "momentum": hp.muon_momentum, "weight_decay": muon_weight_decay(hp, width),
         "muon_eq": hp.muon_eq, "muon_plus": hp.muon_plus, "normuon": hp.normuon, "normuon_beta2": hp.normuon_beta2}
        for shape, params in _by_shape(model_groups["matrix"]).items()
    ]
    return MuonAdamW([g for g in groups if g["params"]], muon_dtype=muon_dtype)


def _by_shape(params: list[nn.Parameter]) -> dict[tuple[int, ...], list[nn.Parameter]]:
    """Muon stacks same-shaped matrices; sorted so every rank builds the same groups in the same order."""
    by_shape: dict[tuple[int, ...], list[nn.Parameter]] = defaultdict(list)
    for p in params:
        by_shape[tuple(p.shape)].append(p)
    return dict(sorted(by_shape.items()))
