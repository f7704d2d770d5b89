"""Verdicts: is a change better per step, per FLOP and per second, and by more than the noise?

A change is an improvement only when it wins on one axis and loses on none (in nanochat's dev/LOG.md, FP8
and MoE looked good per step and lost on wall-clock). A lower loss is only meaningful between runs scored
on the same validation tokens; otherwise no winner is called.

With ≥ 2 seeds in both arms an axis's verdict is Welch's t-test on each run's bpb at the last
common point (difference, 95% CI, p-value; picochat/lab/significance.py); with fewer it says how
many seeds per arm the observed noise would take to resolve the difference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from picochat.lab.compare import AxisComparison, interpolate, run_curve
from picochat.lab.runs import Run
from picochat.lab.significance import (
    CONFIDENCE, POWER, Significance, end_of_curve_jitter, pooled_sd, seeds_needed, welch_t_test,
)

# Config fields that must agree for bpb to be measured on the same thing, and why.
COMPARABILITY = {
    "tokenizer": "tokenizer",
    "loader_mode": "loader mode (BOS best-fit vs greedy packing score different tokens: the lower loss of BOS alignment is partly fewer noisy tokens)",
    "dataset": "validation set (dataset)",
    "max_seq_len": "validation set (sequence length)",
    "eval_tokens": "eval budget (eval_tokens)",
}
AXIS_WORDS = {"step": "per step", "flops": "per FLOP", "time": "per second"}
TIE_BPB = 1e-4  # without repeats, differences below this are called equal


def comparability_problems(runs: list[Run]) -> list[str]:
    """Why these runs' bpb cannot be compared (empty when they can)."""
    problems = [f"run {r.name} has no config.json, so its tokenizer, loader and validation set are unknown"
                for r in runs if not r.config]
    configured = [r for r in runs if r.config]
    for key, what in COMPARABILITY.items():
        values = {r.name: r.config.get(key) for r in configured}
        if len(set(map(repr, values.values()))) > 1:
            problems.append(f"different {what}: " + ", ".join(f"{name}={value}" for name, value in values.items()))
    return problems


def wall_clock_caveats(runs: list[Run]) -> list[str]:
    """Hardware differences that make the wall-clock axis unfair (reported, not refused)."""
    caveats = []
    for key in ("device_name", "world_size", "dtype"):
        values = {r.name: r.env.get(key) for r in runs if r.env}
        if len(set(map(repr, values.values()))) > 1:
            caveats.append(f"wall-clock measured with different {key}: "
                           + ", ".join(f"{name}={value}" for name, value in values.items()))
    return caveats


@dataclass
class SeedNoise:
    """The seed-to-seed σ of final bpb and where it was read (for the seed-count estimate)."""
    sd: float
    source: str


@dataclass
class AxisVerdict:
    axis: str
    difference: float | None  # candidate - baseline bpb at the last common point
    noise: float | None
    significance: Significance | None = None  # ≥ 2 seeds per arm
    seed_noise: SeedNoise | None = None  # fewer: the σ the seed-count estimate uses

    @property
    def direction(self) -> str:
        """better / worse / same / unknown: with seeds, 'same' unless p < 1 − CONFIDENCE;
        without, differences inside the spread of the repeats (or TIE_BPB) are the same."""
        if self.difference is None:
            return "unknown"
        if self.significance is not None:
            if not self.significance.significant:
                return "same"
            return "better" if self.difference < 0 else "worse"
        threshold = self.noise if self.noise is not None else TIE_BPB
        if abs(self.difference) <= threshold:
            return "same"
        return "better" if self.difference < 0 else "worse"

    def describe(self) -> str:
        where = AXIS_WORDS[self.axis]
        if self.difference is None:
            return f"{where}: no common range to compare on"
        if self.significance is not None:
            return self._describe_test(where)
        return f"{self._describe_spread(where)}; {self._describe_seeds_needed()}"

    def _describe_test(self, where: str) -> str:
        s = self.significance
        stats = (f"{CONFIDENCE:.0%} CI {s.low:+.4f} to {s.high:+.4f} bpb, p = {s.p_value:.3g}, "
                 f"Welch's t over {s.seeds[0]} vs {s.seeds[1]} seeds")
        if not s.significant:
            return f"{where}: not distinguishable from noise ({self.difference:+.4f} bpb; {stats})"
        return f"{where}: {self.direction} by {abs(self.difference):.4f} bpb ({stats})"

    def _describe_seeds_needed(self) -> str:
        if self.seed_noise is None:
            return "fewer than 2 seeds per arm and no noise estimate: run ≥ 2 seeds per arm for a p-value"
        n = seeds_needed(self.difference, self.seed_noise.sd)
        need = (f"≈{n} seeds per arm would resolve it" if n is not None else "no difference to resolve")
        return (f"fewer than 2 seeds per arm, so no p-value; at σ = {self.seed_noise.sd:.4f} bpb "
                f"({self.seed_noise.source}) {need} (two-sided α {1 - CONFIDENCE:.2f}, power {POWER}, "
                "normal approximation, equal σ in both arms)")

    def _describe_spread(self, where: str) -> str:
        size = f"{abs(self.difference):.4f} bpb"
        if self.noise is None:
            noise = "noise unknown (no repeats)"
        elif abs(self.difference) > self.noise:
            noise = f"exceeds the run-to-run noise {self.noise:.4f}"
        else:
            noise = f"within the run-to-run noise {self.noise:.4f}: not significant"
        word = {"better": "better", "worse": "worse", "same": "no different"}[self.direction]
        if self.direction == "same" and self.noise is None:
            return f"{where}: the same within {TIE_BPB} bpb ({noise})"
        return f"{where}: {word} by {size} ({noise})"


def summary_sentence(verdicts: dict[str, AxisVerdict]) -> str:
    """One line in plain words, e.g. 'better per step, worse per second: not a wall-clock gain'."""
    d = {axis: v.direction for axis, v in verdicts.items()}
    known = [x for x in d.values() if x != "unknown"]
    if not known:
        return "no axis has a common range: nothing to conclude"
    if all(x == "same" for x in known):
        return "no difference beyond the noise on any axis"
    if all(x in ("better", "same") for x in known):
        every = all(x == "better" for x in known) and len(known) == 3
        return "better on every axis: a real gain" if every else "better or equal on every axis: a gain"
    if all(x in ("worse", "same") for x in known):
        return "worse on every axis: no gain" if all(x == "worse" for x in known) else "worse or equal on every axis: no gain"
    step, second = d.get("step"), d.get("time")
    if step == "better" and second == "worse":
        return "better per step, worse per second: not a wall-clock gain"
    if step == "worse" and second == "better":
        return "worse per step, better per second: a throughput gain, not a learning gain"
    parts = ", ".join(f"{x} {AXIS_WORDS[axis]}" for axis, x in d.items() if x in ("better", "worse"))
    return f"{parts}: mixed, not a clear gain"


def is_gain(verdicts: dict[str, AxisVerdict]) -> bool:
    """Better on at least one axis and worse on none."""
    directions = [v.direction for v in verdicts.values()]
    return "better" in directions and "worse" not in directions


def axis_verdicts(comparisons: dict[str, AxisComparison], group: int, noise: float | None,
                  arms: tuple[list[Run], list[Run]] | None = None) -> dict[str, AxisVerdict]:
    """Each axis's verdict for `group` against group 0; `arms` (baseline runs, candidate runs)
    adds the seed statistics."""
    verdicts = {axis: AxisVerdict(axis, c.difference(group), noise) for axis, c in comparisons.items()}
    if arms is None:
        return verdicts
    for axis, verdict in verdicts.items():
        grid = comparisons[axis].grid
        if verdict.difference is None:
            continue
        finals = [[float(interpolate(run_curve(run, axis), grid[-1:])[0]) for run in arm] for arm in arms]
        if all(len(arm) >= 2 for arm in finals):
            verdict.significance = welch_t_test(*finals)
        else:
            verdict.seed_noise = seed_noise(finals, [run for arm in arms for run in arm])
    return verdicts


def seed_noise(finals: list[list[float]], runs: list[Run]) -> SeedNoise | None:
    """σ pooled over the arms with repeats; failing that, the largest end-of-curve jitter of a run."""
    sd = pooled_sd(finals)
    if sd is not None:
        return SeedNoise(sd, "pooled over the repeats")
    jitters = [j for run in runs if (j := end_of_curve_jitter([r["val_bpb"] for r in run.evals()])) is not None]
    if not jitters or max(jitters) == 0:
        return None
    return SeedNoise(max(jitters), "jitter of the last evaluations, a lower bound on seed noise")


def significance_record(verdict: AxisVerdict) -> dict | None:
    """The axis's test as plain numbers for JSON (None without ≥ 2 seeds per arm)."""
    if verdict.significance is None:
        return None
    return asdict(verdict.significance)


def combined_noise(noises: list[float | None]) -> float | None:
    """The larger spread of the groups being compared, when any has repeats."""
    known = [n for n in noises if n is not None]
    return max(known) if known else None
