"""Scaling laws: from a depth to a whole training plan (tokens, batch, steps, WD, LRs, schedule).

Every law is a small pure function with its source beside it. The reference constants live in
`ScalingConstants`, so a fitted-constants file (`load_constants`) can replace the published defaults.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from picochat.errors import PicochatError
from picochat.hardware import PEAK_FLOPS, peak_flops
from picochat.model.accounting import flops_per_token, parameter_counts, scaling_params
from picochat.model.config import GPTConfig

# Weight-decay table from nanochat's dev/LOG.md sweeps: width -> best weight decay (d8, d12, d16, d20).
SEED_WEIGHT_DECAY = {512: 0.40, 768: 0.22, 1024: 0.10, 1280: 0.08}

# Base learning rates per parameter group, at width 768 and batch 2^19 (nanochat's scripts/base_train.py; the
# value embedding takes half the embedding LR).
DEFAULT_LEARNING_RATES = {
    "matrix": 0.02,  # Muon
    "embedding": 0.3,
    "value_embedding": 0.15,
    "lm_head": 0.008,
    "resid_lambda": 0.005,
    "x0_lambda": 0.5,
}
# AdamW groups whose LR shrinks as 1/sqrt(width) (nanochat's dmodel_lr_scale,
# which also covers the value embedding, as it is "half the embedding LR").
WIDTH_SCALED_GROUPS = ("embedding", "value_embedding", "lm_head")


def fit_weight_decay_reference(points: dict[int, float], width_ref: int = 768) -> float:
    """The constant C of WD(width) = C * (width_ref / width)^2 that best fits `points`
    (width -> WD) by least squares in log space: log C = mean(log WD_i + 2 log(width_i / width_ref))."""
    logs = [math.log(wd) + 2 * math.log(width / width_ref) for width, wd in points.items()]
    return math.exp(sum(logs) / len(logs))


# The seed's table is not exactly 1/width^2: anchored at d12's 0.22 the law gives 0.495 at d8 and
# 0.124 at d16 (24% off). Fitted to all four points it gives 0.198 at width 768, and every seed
# point lies within 12% of the law (0.40, 0.22, 0.10, 0.08 vs 0.445, 0.198, 0.111, 0.071).
SEED_WD_REF = fit_weight_decay_reference(SEED_WEIGHT_DECAY)


@dataclass(frozen=True)
class ScalingConstants:
    """The reference constants of the laws; `picochat fit` may write a JSON file overriding them."""
    ratio: float = 10.5  # tokens per scaling param, Kaplan-style count (nanochat dev/LOG.md)
    batch_exponent: float = 0.383  # B_opt ∝ D^0.383 (Cerebras, "Power Lines", arXiv 2505.13738)
    reference_batch_tokens: int = 2**19  # ... anchored at d12 with B = 2^19 (nanochat dev/LOG.md)
    reference_depth: int = 12
    wd_ref: float = SEED_WD_REF  # WD = wd_ref * (wd_width_ref / width)^2 (nanochat dev/LOG.md)
    wd_width_ref: int = 768
    lr_width_ref: int = 768  # LR x (width / 768)^-0.5 for WIDTH_SCALED_GROUPS (nanochat's dmodel_lr_scale)
    learning_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LEARNING_RATES))
    # Schedules (nanochat's scripts/base_train.py).
    warmup_steps: int = 40
    warmdown_fraction: float = 0.65  # linear warm-down over the last 65% of the steps ...
    final_lr_fraction: float = 0.05  # ... to 5% of the LR
    muon_momentum_start: float = 0.85
    muon_momentum_peak: float = 0.97  # reached after muon_momentum_ramp_steps
    muon_momentum_ramp_steps: int = 400
    muon_momentum_warmdown: float = 0.90  # lowered to this during warm-down


def load_constants(path: str | Path) -> ScalingConstants:
    """Read a JSON object of `ScalingConstants` fields; fields it omits keep the seed's values,
    and a partial `learning_rates` is merged into the defaults."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PicochatError(f"constants file {path} does not exist; pass a JSON file written by `picochat fit`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise PicochatError(f"constants file {path} is not readable JSON ({e}); fix or regenerate it") from None
    if not isinstance(data, dict):
        raise PicochatError(f"constants file {path} must hold a JSON object of field: value")
    fields = {f.name: f for f in dataclasses.fields(ScalingConstants)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PicochatError(f"constants file {path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    rates = data.get("learning_rates", {})
    if not isinstance(rates, dict) or set(rates) - set(DEFAULT_LEARNING_RATES):
        raise PicochatError(f"constants file {path}: learning_rates must map groups "
                            f"{', '.join(DEFAULT_LEARNING_RATES)} to numbers, got {rates!r}")
    for name, value in {**data, **rates}.items():
        if name != "learning_rates" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise PicochatError(f"constants file {path}: {name} must be a positive number, got {value!r}")
    if "learning_rates" in data:
        data["learning_rates"] = {**DEFAULT_LEARNING_RATES, **rates}
    return ScalingConstants(**data)


def target_tokens(scaling_params: int, ratio: float = 10.5) -> int:
    """Compute-optimal training tokens: ratio x Kaplan-style params (nanochat dev/LOG.md)."""
    return int(ratio * scaling_params)


def steps_for_flops(flop_budget: float, flops_per_token: int, tokens_per_step: int) -> int:
    """Optimizer steps that spend `flop_budget`: F / (FLOPs per token × tokens per step), rounded to
    the nearest whole step, so the spend is within half a step of the budget (no bias either way
    across an isoFLOP sweep). A budget under half a step is refused rather than rounded up to one."""
    flops_per_step = flops_per_token * tokens_per_step
    steps = round(flop_budget / flops_per_step)
    if steps < 1:
        raise PicochatError(f"a FLOP budget of {flop_budget:.4g} is under half an optimizer step "
                            f"({flops_per_step:.4g} FLOPs); raise --target-flops or lower --total-batch-size")
    return steps


def optimal_batch_tokens(tokens: int, reference_tokens: int, reference_batch: int = 2**19,
                         exponent: float = 0.383) -> int:
    """Total batch in tokens: B_ref * (D / D_ref)^0.383, rounded to a power of two in log space
    (Power Lines, arXiv 2505.13738: 10x more tokens -> ~2.4x bigger batch)."""
    predicted = reference_batch * (tokens / reference_tokens) ** exponent
    return max(1, 2 ** round(math.log2(predicted)))


def weight_decay_for_width(width: int, wd_ref: float = SEED_WD_REF, width_ref: int = 768) -> float:
    """WD ∝ 1/width^2, anchored at wd_ref for width_ref (nanochat dev/LOG.md; see SEED_WD_REF for the fit)."""
    return wd_ref * (width_ref / width) ** 2


def learning_rates(width: int, total_batch_size: int, constants: ScalingConstants | None = None) -> dict[str, float]:
    """Per-group LRs: the base LR, x (width/768)^-0.5 for the embedding-like groups,
    all x sqrt(B / 2^19) (nanochat's scripts/base_train.py scales LRs by the batch so)."""
    c = constants or ScalingConstants()
    batch_scale = math.sqrt(total_batch_size / c.reference_batch_tokens)
    width_scale = (width / c.lr_width_ref) ** -0.5
    return {group: lr * batch_scale * (width_scale if group in WIDTH_SCALED_GROUPS else 1.0)
            for group, lr in c.learning_rates.items()}


def reference_tokens(vocab_size: int, constants: ScalingConstants) -> int:
    """D_ref of the batch law: the standard d12 model's target tokens at the same vocab and ratio."""
    reference = GPTConfig(depth=constants.reference_depth, vocab_size=vocab_size)
    return target_tokens(scaling_params(reference), constants.ratio)


@dataclass(frozen=True)
class Plan:
    """Everything the scaling laws derive for one model shape."""
    config: GPTConfig
    constants: ScalingConstants
    params: dict[str, int]  # by optimizer group, plus "total"
    scaling_params: int
    flops_per_token: int
    target_tokens: int  # ratio x scaling params, or the FLOP budget / FLOPs per token
    total_batch_size: int  # tokens per optimizer step
    num_steps: int
    weight_decay: float
    learning_rates: dict[str, float]
    warmup_steps: int
    warmdown_steps: int
    target_flops: float | None = None  # the FLOP budget that set the horizon, if one did

    @property
    def depth(self) -> int:
        return self.config.depth

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def n_heads(self) -> int:
        return self.config.n_heads

    @property
    def tokens(self) -> int:
        """Tokens actually trained: whole steps of the total batch."""
        return self.num_steps * self.total_batch_size

    @property
    def total_flops(self) -> float:
        return float(self.flops_per_token) * self.tokens

    def estimated_hours(self, gpu: str = "H100", mfu: float = 0.4, n_gpus: int = 1, dtype: str = "bfloat16") -> float:
        """Wall-clock hours for total_flops at `mfu` of the named GPU's peak (hardware.PEAK_FLOPS)."""
        peak = peak_flops(gpu, dtype)
        if peak is None:
            raise PicochatError(f"unknown GPU {gpu!r}; known: {', '.join(PEAK_FLOPS)}")
        if not 0 < mfu <= 1 or n_gpus < 1:
            raise PicochatError(f"need 0 < mfu <= 1 and n_gpus >= 1, got mfu={mfu}, n_gpus={n_gpus}")
        return self.total_flops / (peak * mfu * n_gpus) / 3600

    def to_dict(self) -> dict:
        c, k = self.config, self.constants
        return {
            "depth": c.depth, "width": c.width, "n_heads": c.n_heads, "kv_heads": c.kv_heads,
            "head_dim": c.head_dim, "aspect_ratio": c.aspect_ratio, "vocab_size": c.vocab_size,
            "padded_vocab_size": c.padded_vocab_size, "max_seq_len": c.max_seq_len,
            "window_pattern": c.window_pattern, "window_sizes": c.window_sizes(),
            "params": dict(self.params), "scaling_params": self.scaling_params,
            "flops_per_token": self.flops_per_token, "ratio": k.ratio,
            "target_flops": self.target_flops, "target_tokens": self.target_tokens, "tokens": self.tokens,
            "total_batch_size": self.total_batch_size, "num_steps": self.num_steps,
            "total_flops": self.total_flops, "weight_decay": self.weight_decay,
            "learning_rates": dict(self.learning_rates),
            "warmup_steps": self.warmup_steps, "warmdown_steps": self.warmdown_steps,
            "final_lr_fraction": k.final_lr_fraction,
            "muon_momentum": {"start": k.muon_momentum_start, "peak": k.muon_momentum_peak,
                              "ramp_steps": k.muon_momentum_ramp_steps, "warmdown": k.muon_momentum_warmdown},
        }


def plan_for_config(cfg: GPTConfig, constants: ScalingConstants | None = None,
                    total_batch_size: int | None = None, num_iterations: int | None = None,
                    target_flops: float | None = None) -> Plan:
    """The plan for a given shape; total_batch_size / num_iterations override the laws when set.
    `target_flops` sets the horizon from a FLOP budget instead of the tokens:params ratio (the
    batch law then reads the budget's tokens)."""
    c = constants or ScalingConstants()
    for name, value in (("total_batch_size", total_batch_size), ("num_iterations", num_iterations)):
        if value is not None and value < 1:
            raise PicochatError(f"{name} must be a positive integer (or unset to derive it), got {value}")
    if target_flops is not None and (num_iterations is not None or not target_flops > 0):
        raise PicochatError(f"target_flops must be a positive FLOP count and sets the horizon alone "
                            f"(drop num_iterations), got target_flops={target_flops}, num_iterations={num_iterations}")
    n_scaling, per_token = scaling_params(cfg), flops_per_token(cfg)
    tokens = max(1, int(target_flops / per_token)) if target_flops else target_tokens(n_scaling, c.ratio)
    batch = total_batch_size or optimal_batch_tokens(
        tokens, reference_tokens(cfg.vocab_size, c), c.reference_batch_tokens, c.batch_exponent)
    if target_flops:
        num_steps = steps_for_flops(target_flops, per_token, batch)
    else:
        num_steps = num_iterations or max(1, tokens // batch)
    return Plan(
        config=cfg, constants=c, params=parameter_counts(cfg), scaling_params=n_scaling,
        flops_per_token=per_token, target_tokens=tokens, total_batch_size=batch, target_flops=target_flops,
        num_steps=num_steps, weight_decay=weight_decay_for_width(cfg.width, c.wd_ref, c.wd_width_ref),
        learning_rates=learning_rates(cfg.width, batch, c),
        warmup_steps=min(c.warmup_steps, num_steps), warmdown_steps=round(c.warmdown_fraction * num_steps),
    )


def make_plan(depth: int, vocab_size: int = 32768, aspect_ratio: int = 64, head_dim: int = 128,
              max_seq_len: int = 2048, window_pattern: str = "SSSL", ratio: float | None = None,
              total_batch_size: int | None = None, num_iterations: int | None = None,
              constants: ScalingConstants | None = None, n_kv_heads: int | None = None,
              target_flops: float | None = None, smear: bool = False, backout: bool = False) -> Plan:
    """Build the shape from depth (GPTConfig validates it) and derive its plan.
    `ratio` overrides constants.ratio (10.5 unless a constants file says otherwise);
    `target_flops` replaces the ratio's horizon by a FLOP budget's."""
    cfg = GPTConfig(depth=depth, vocab_size=vocab_size, aspect_ratio=aspect_ratio, head_dim=head_dim,
                    n_kv_heads=n_kv_heads, max_seq_len=max_seq_len, window_pattern=window_pattern,
                    smear=smear, backout=backout)
    constants = constants or ScalingConstants()
    if ratio is not None:
        if ratio <= 0:
            raise PicochatError(f"ratio (tokens per scaling param) must be positive, got {ratio}")
        constants = dataclasses.replace(constants, ratio=ratio)
    if ratio is not None and target_flops is not None:
        raise PicochatError("ratio and target_flops both set the horizon; give one")
    return plan_for_config(cfg, constants, total_batch_size, num_iterations, target_flops)
