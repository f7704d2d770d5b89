"""Runs side by side on three axes: validation bpb against steps, FLOPs and wall-clock (a gain must show
on each, as nanochat's dev/LOG.md asks).

Curves are compared at common points: a grid over the range every run covers on that axis,
each run's bpb linearly interpolated onto it. Runs that share a config except the seed are one
group (repeats); a group's curve is the mean of its runs and its spread is the run-to-run noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from picochat.lab.runs import Run, summarize

AXES = {"step": "steps", "flops": "FLOPs", "time": "wall-clock seconds"}
GRID_POINTS = 50
# Fields that do not change what a run learns: repeats differ only in these (and the seed).
NOT_THE_EXPERIMENT = ("run", "seed", "resume", "force", "wandb", "log_every", "sample_every", "save_every",
                      "keep_checkpoints", "device_batch_size", "compile", "device", "core_every", "core_max_per_task",
                      "core_bundle", "chat_eval_every")
# Flags newer than some runs, at the value a run that predates them trained with.
PREDATED_FLAGS = {"smear": False, "backout": False, "muon_eq": False, "muon_plus": False, "normuon": False,
                  "target_flops": None}
# evaluations logged during training (metrics.jsonl), drawn against steps when present
TRAINING_EVALS = {"core": "CORE", "chatcore": "ChatCORE", "heldout_pass@k": "held-out pass@k"}


@dataclass
class Curve:
    x: np.ndarray
    bpb: np.ndarray


def run_curve(run: Run, axis: str) -> Curve:
    """(axis value, val bpb) at each of the run's evaluations."""
    evals = [r for r in run.evals() if isinstance(r.get(axis), (int, float))]
    return Curve(np.array([r[axis] for r in evals], dtype=float), np.array([r["val_bpb"] for r in evals], dtype=float))


def eval_series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a training-time evaluation (`TRAINING_EVALS`) in the run's metrics."""
    points = [(r["step"], r[key]) for r in run.metrics if isinstance(r.get(key), (int, float))]
    return tuple(np.array(points, dtype=float).reshape(-1, 2).T)


def common_grid(curves: list[Curve], points: int = GRID_POINTS) -> np.ndarray:
    """Points inside the range every curve covers; empty when they do not overlap."""
    if any(len(c.x) == 0 for c in curves):
        return np.array([])
    low, high = max(c.x.min() for c in curves), min(c.x.max() for c in curves)
    if high < low:
        return np.array([])
    return np.array([high]) if high == low else np.linspace(low, high, points)


def interpolate(curve: Curve, grid: np.ndarray) -> np.ndarray:
    order = np.argsort(curve.x)
    return np.interp(grid, curve.x[order], curve.bpb[order])


def experiment(config: dict) -> dict:
    """What makes two runs the same experiment: the config without seed, name and logistics."""
    return {k: v for k, v in {**PREDATED_FLAGS, **config}.items() if k not in NOT_THE_EXPERIMENT}


def group_key(config: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in experiment(config).items()))


def config_differences(baseline: dict, candidate: dict) -> dict[str, list]:
    """The experiment's fields whose values differ: {field: [baseline value, candidate value]}."""
    base, cand = experiment(baseline), experiment(candidate)
    return {k: [base.get(k), cand.get(k)] for k in dict.fromkeys([*base, *cand]) if base.get(k) != cand.get(k)}


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by experiment, in the order their first member was given."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run.config) if run.config else ("name", run.name), []).append(run)
    return list(groups.values())


def group_label(group: list[Run]) -> str:
    return group[0].name if len(group) == 1 else f"{group[0].name} (+{len(group) - 1} repeats)"


def group_noise(group: list[Run]) -> float | None:
    """Run-to-run noise: the spread (max - min) of final val bpb over a group's repeats."""
    finals = [s["val_bpb"] for s in map(summarize, group) if s["val_bpb"] is not None]
    return max(finals) - min(finals) if len(finals) >= 2 else None


@dataclass
class AxisComparison:
    axis: str
    grid: np.ndarray
    bpb: list[np.ndarray]  # one mean curve per group, on the grid

    def difference(self, group: int, baseline: int = 0) -> float | None:
        """bpb of `group` minus the baseline's at the last common point (negative: better)."""
        if len(self.grid) == 0:
            return None
        return float(self.bpb[group][-1] - self.bpb[baseline][-1])


def compare_axis(groups: list[list[Run]], axis: str, points: int = GRID_POINTS) -> AxisComparison:
    """Each group's mean bpb on a grid common to every run of every group."""
    curves = [[run_curve(run, axis) for run in group] for group in groups]
    grid = common_grid([c for group in curves for c in group], points)
    means = [np.mean([interpolate(c, grid) for c in group], axis=0) if len(grid) else np.array([])
             for group in curves]
    return AxisComparison(axis, grid, means)


def throughput(group: list[Run]) -> dict:
    """Mean tokens/s, MFU and the peak memory over a group's runs (None where never measured)."""
    summaries = [summarize(run) for run in group]

    def avg(key):
        values = [s[key] for s in summaries if s[key] is not None]
        return sum(values) / len(values) if values else None
    peaks = [s["peak_memory"] for s in summaries if s["peak_memory"] is not None]
    return {"tok_per_sec": avg("tok_per_sec"), "mfu": avg("mfu"), "peak_memory": max(peaks) if peaks else None,
            "val_bpb": avg("val_bpb"), "time": avg("time"), "flops": avg("flops"), "steps": avg("steps")}
