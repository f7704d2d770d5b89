"""Scaling-law fits from sweep results: y = a * x^b by least squares in log-log space.

The 95% interval of the exponent is slope ± t(0.975, n-2) x its standard error (numpy only).
From a sweep's optima: batch vs training tokens (Cerebras, "Power Lines", arXiv 2505.13738: b ≈ 0.383), weight decay
vs width (nanochat dev/LOG.md: b ≈ -2), loss vs compute (on the compute frontier), and the compute-optimal
tokens:params ratio (nanochat dev/LOG.md: ≈ 10.5, Kaplan-style params). The constants they give are written
with `ScalingConstants`' field names, so `picochat plan --constants FILE` reads them.

From an isoFLOP sweep (`isoflop:` budgets × depths) each budget's bpb is fitted by a parabola in
log params, whose minimum is that budget's compute-optimal size (Hoffmann et al., "Training
Compute-Optimal Large Language Models", arXiv 2203.15556, approach 2); power laws across the
budgets then give N_opt ∝ C^a and D_opt ∝ C^b.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from picochat.errors import PicochatError
from picochat.model.accounting import attention_flops_per_token
from picochat.model.config import GPTConfig
from picochat.scaling import ScalingConstants

# Student t 97.5% quantiles for 1..30 degrees of freedom (two-sided 95%); 1.96 beyond.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
# Fields that define which runs are "the same but for the knob" are the sweep overrides; these
# follow from the knob (more batch -> fewer steps, other LRs) and must not split the groups.
FOLLOWS_FROM_KNOB = ("num_iterations", "ratio", "seed")


def t_quantile(dof: int) -> float:
    return T975[dof - 1] if 1 <= dof <= len(T975) else (1.96 if dof > len(T975) else math.inf)


@dataclass
class PowerLaw:
    coefficient: float
    exponent: float
    stderr: float  # of the exponent
    n: int
    r2: float

    @property
    def ci(self) -> tuple[float, float]:
        half = t_quantile(self.n - 2) * self.stderr
        return self.exponent - half, self.exponent + half

    def predict(self, x):
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent

    def to_dict(self) -> dict:
        low, high = self.ci
        return {"coefficient": self.coefficient, "exponent": self.exponent, "stderr": self.stderr,
                "ci95": [low, high], "n": self.n, "r2": self.r2}


def fit_power_law(x, y) -> PowerLaw:
    """Ordinary least squares of log y on log x; the exponent's SE is sqrt(s² / Σ(log x - mean)²)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        raise PicochatError(f"a power-law fit needs at least 2 points with different x, got {len(lx)}")
    slope, intercept = np.polyfit(lx, ly, 1)
    residuals = ly - (slope * lx + intercept)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    stderr = math.sqrt(float(np.sum(residuals ** 2)) / (len(lx) - 2) / sxx) if len(lx) > 2 else math.inf
    total = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1 - float(np.sum(residuals ** 2)) / total if total > 0 else 1.0
    return PowerLaw(math.exp(intercept), float(slope), stderr, len(lx), r2)


# ---- reading sweep rows ------------------------------------------------------------------------

def finished(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "done" and r.get("summary", {}).get("val_bpb") is not None]


def width_of(config: dict) -> int:
    return GPTConfig(depth=config["depth"], aspect_ratio=config.get("aspect_ratio", 64),
                     head_dim=config.get("head_dim", 128)).width


def scaling_params_of(row: dict) -> float:
    """Kaplan-style params from the logged FLOPs: FLOPs/token = 6 N + attention (ARCHITECTURE.md),
    so N = (FLOPs/token - attention) / 6, without needing the vocab size."""
    c, s = row["config"], row["summary"]
    shape = GPTConfig(depth=c["depth"], aspect_ratio=c.get("aspect_ratio", 64), head_dim=c.get("head_dim", 128),
                      n_kv_heads=c.get("n_kv_heads"), max_seq_len=c.get("max_seq_len", 2048),
                      window_pattern=c.get("window_pattern", "SSSL"))
    return (s["flops"] / s["tokens"] - attention_flops_per_token(shape)) / 6


def optima(rows: list[dict], knob: str) -> list[dict]:
    """Per group of runs alike but for `knob` (and what follows from it), the row with the lowest
    final val bpb; groups where the knob took a single value say nothing and are dropped."""
    groups: dict[str, list[dict]] = {}
    for row in finished(rows):
        if row.get("config", {}).get(knob) is None:
            continue
        key = {k: v for k, v in row.get("overrides", {}).items() if k != knob and k not in FOLLOWS_FROM_KNOB}
        groups.setdefault(json.dumps(key, sort_keys=True), []).append(row)
    best = []
    for members in groups.values():
        if len({m["config"][knob] for m in members}) >= 2:
            best.append(min(members, key=lambda m: m["summary"]["val_bpb"]))
    return best


def compute_frontier(rows: list[dict]) -> list[dict]:
    """Runs no cheaper run beats: sorted by FLOPs, each with a lower val bpb than all before it."""
    frontier, best = [], math.inf
    for row in sorted(finished(rows), key=lambda r: r["summary"]["flops"] or 0):
        if row["summary"].get("flops") and row["summary"]["val_bpb"] < best:
            frontier.append(row)
            best = row["summary"]["val_bpb"]
    return frontier


def iso_flop_groups(rows: list[dict], tolerance: float = 0.1) -> list[list[dict]]:
    """Runs whose total FLOPs are within `tolerance` (relative) of their group's smallest."""
    groups: list[list[dict]] = []
    for row in sorted((r for r in finished(rows) if r["summary"].get("flops")), key=lambda r: r["summary"]["flops"]):
        if groups and row["summary"]["flops"] <= groups[-1][0]["summary"]["flops"] * (1 + tolerance):
            groups[-1].append(row)
        else:
            groups.append([row])
    return [g for g in groups if len({r["config"].get("depth") for r in g}) >= 2]


# ---- the four fits -----------------------------------------------------------------------------

@dataclass
class FitResult:
    name: str
    law: PowerLaw | None
    x: list[float]
    y: list[float]
    xlabel: str
    ylabel: str
    note: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "law": self.law.to_dict() if self.law else None, "x": self.x, "y": self.y,
                "xlabel": self.xlabel, "ylabel": self.ylabel, "note": self.note}


def fit_points(name: str, x: list[float], y: list[float], xlabel: str, ylabel: str, needs: str) -> FitResult:
    distinct = len(set(x))
    if distinct < 2:
        return FitResult(name, None, x, y, xlabel, ylabel, f"skipped: {distinct} usable point(s); needs {needs}")
    return FitResult(name, fit_power_law(x, y), x, y, xlabel, ylabel)


def fit_batch(rows: list[dict]) -> FitResult:
    best = optima(rows, "total_batch_size")
    return fit_points("batch_vs_tokens", [float(r["summary"]["tokens"]) for r in best],
                      [float(r["config"]["total_batch_size"]) for r in best], "training tokens D", "optimal batch (tokens)",
                      "total_batch_size swept at 2+ horizons (depths)")


def fit_weight_decay(rows: list[dict]) -> FitResult:
    best = optima(rows, "weight_decay")
    return fit_points("weight_decay_vs_width", [float(width_of(r["config"])) for r in best],
                      [float(r["config"]["weight_decay"]) for r in best], "model width", "optimal weight decay",
                      "weight_decay swept at 2+ widths (depths)")


def fit_loss(rows: list[dict]) -> FitResult:
    frontier = compute_frontier(rows)
    return fit_points("loss_vs_compute", [float(r["summary"]["flops"]) for r in frontier],
                      [float(r["summary"]["val_bpb"]) for r in frontier], "training FLOPs", "final validation bpb",
                      "2+ runs of different compute")


def fit_ratio(rows: list[dict]) -> FitResult:
    """The tokens:params ratio of the best run of each iso-FLOP group, fitted against compute
    (a flat law, exponent ≈ 0, means one ratio holds at every scale, as nanochat's sweeps found (dev/LOG.md))."""
    best = [min(g, key=lambda r: r["summary"]["val_bpb"]) for g in iso_flop_groups(rows)]
    best = [r for r in best if scaling_params_of(r) > 0]  # FLOPs that do not match the shape: not a real run
    ratios = [r["summary"]["tokens"] / scaling_params_of(r) for r in best]
    result = fit_points("ratio_vs_compute", [float(r["summary"]["flops"]) for r in best], ratios, "training FLOPs",
                        "compute-optimal tokens / scaling params", "2+ iso-FLOP groups of 2+ depths each")
    if len(ratios) == 1:
        result.note = f"one iso-FLOP group: ratio {ratios[0]:.2f} (no fit)"
    return result


# ---- isoFLOP parabolas -------------------------------------------------------------------------

@dataclass
class IsoFlopOptimum:
    """The bottom of one budget's parabola: bpb = a·(ln N)² + b·ln N + c."""
    budget: float  # FLOPs
    params: float  # scaling params at the minimum
    tokens: float  # tokens the budget buys at that size
    depth: float  # interpolated between the depths tried
    bpb: float  # the parabola's minimum
    depths: list[int]

    @property
    def ratio(self) -> float:
        return self.tokens / self.params

    def to_dict(self) -> dict:
        return {"budget": self.budget, "params": self.params, "tokens": self.tokens, "ratio": self.ratio,
                "depth": self.depth, "bpb": self.bpb, "depths": self.depths}


def budget_groups(rows: list[dict]) -> dict[float, list[dict]]:
    """Finished runs by FLOP budget: the `target_flops` an isoFLOP sweep set, else iso_flop_groups
    of measured FLOPs (keyed by their mean). Runs whose FLOPs do not match their shape are left out."""
    done = [r for r in finished(rows) if r["summary"].get("flops") and scaling_params_of(r) > 0]
    if any("target_flops" in r.get("overrides", {}) for r in done):
        groups: dict[float, list[dict]] = {}
        for r in done:
            if "target_flops" in r.get("overrides", {}):
                groups.setdefault(float(r["overrides"]["target_flops"]), []).append(r)
        return groups
    return {float(np.mean([r["summary"]["flops"] for r in g])): g for g in iso_flop_groups(done)}


def parabola_optimum(budget: float, runs: list[dict]) -> IsoFlopOptimum | str:
    """The budget's optimum, or why there is none: it needs 3+ depths, an upward parabola, and its
    minimum inside the sizes tried (an edge minimum says the sweep should extend its depths)."""
    runs = sorted(runs, key=scaling_params_of)
    depths = [r["config"]["depth"] for r in runs]
    if len(set(depths)) < 3:
        return f"budget {budget:.3g}: {len(set(depths))} depth(s); a parabola needs 3+"
    log_params = np.log([scaling_params_of(r) for r in runs])
    a, b, c = np.polyfit(log_params, [r["summary"]["val_bpb"] for r in runs], 2)
    if a <= 0:
        return f"budget {budget:.3g}: bpb is not convex in log params (no minimum); add depths or seeds"
    best = -b / (2 * a)
    if not log_params[0] <= best <= log_params[-1]:
        edge = "smallest" if best < log_params[0] else "largest"
        return f"budget {budget:.3g}: the minimum lies beyond the {edge} depth tried; extend the depths"
    # tokens ≈ budget / FLOPs-per-token, smooth in log params: read it off a line through the runs
    log_tokens = np.polyval(np.polyfit(log_params, np.log([r["summary"]["tokens"] for r in runs]), 1), best)
    return IsoFlopOptimum(budget, float(np.exp(best)), float(np.exp(log_tokens)),
                          float(np.interp(best, log_params, depths)), float(c - b * b / (4 * a)), depths)


def isoflop_optima(rows: list[dict]) -> tuple[list[IsoFlopOptimum], list[str]]:
    """Every budget's optimum, smallest budget first, and a note for each budget without one."""
    optima_, notes = [], []
    for budget, runs in sorted(budget_groups(rows).items()):
        result = parabola_optimum(budget, runs)
        (optima_ if isinstance(result, IsoFlopOptimum) else notes).append(result)
    return optima_, notes


def fit_isoflop(rows: list[dict]) -> list[FitResult]:
    """N_opt and D_opt against compute, from the isoFLOP parabolas (Chinchilla found both ∝ C^0.5)."""
    best, notes = isoflop_optima(rows)
    budgets = [o.budget for o in best]
    needs = "an isoflop: sweep with 2+ budgets of 3+ depths, each with its minimum inside the depths tried"
    fits = [fit_points("optimal_params_vs_compute", budgets, [o.params for o in best], "training FLOPs",
                       "compute-optimal scaling params", needs),
            fit_points("optimal_tokens_vs_compute", budgets, [o.tokens for o in best], "training FLOPs",
                       "compute-optimal tokens", needs)]
    for fit in fits:
        fit.note = "; ".join(filter(None, [fit.note, *notes]))
    return fits


def fit_sweep(rows: list[dict]) -> list[FitResult]:
    return [fit_batch(rows), fit_weight_decay(rows), fit_loss(rows), fit_ratio(rows), *fit_isoflop(rows)]


def geometric_mean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def fitted_constants(fits: list[FitResult], reference_tokens: float | None = None) -> dict:
    """ScalingConstants fields the fits determine (the others keep the published defaults when read).

    batch_exponent from the batch law, and reference_batch_tokens = the law at the reference
    tokens (a power of two, as the plan rounds); wd_ref = the weight-decay law at wd_width_ref;
    ratio = the geometric mean of the compute-optimal ratios: the isoFLOP parabolas' when the
    sweep has them, else the best run of each iso-FLOP group's.
    """
    seed = ScalingConstants()
    by_name = {f.name: f for f in fits}
    constants = {}
    batch = by_name.get("batch_vs_tokens")
    if batch and batch.law:
        constants["batch_exponent"] = batch.law.exponent
        if reference_tokens:
            constants["reference_batch_tokens"] = 2 ** round(math.log2(float(batch.law.predict(reference_tokens))))
    wd = by_name.get("weight_decay_vs_width")
    if wd and wd.law:
        constants["wd_ref"] = float(wd.law.predict(seed.wd_width_ref))
        constants["wd_width_ref"] = seed.wd_width_ref
    ratio = by_name.get("ratio_vs_compute")
    params, tokens = by_name.get("optimal_params_vs_compute"), by_name.get("optimal_tokens_vs_compute")
    if params and tokens and params.y:
        constants["ratio"] = geometric_mean([d / n for d, n in zip(tokens.y, params.y)])
    elif ratio and ratio.y:
        constants["ratio"] = geometric_mean(ratio.y)
    return constants


def write_constants(constants: dict, path: Path) -> Path:
    if not constants:
        raise PicochatError("no fit produced a constant (see the skipped fits above); nothing written to "
                            f"{path}. Sweep total_batch_size, weight_decay or depth at fixed compute first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(constants, indent=2) + "\n")
    return path
