"""The CPU rung's results table: each extra (and all five together) against the baseline, from `picochat compare`.

    PICOCHAT_HOME=... python experiments/extras_table.py            # after the d4 sweep (experiments/README.md)

For each arm it runs `picochat compare BASELINE_SEEDS ARM_SEEDS --json` and prints one Markdown row: the final
val bpb of each arm (mean over seeds), the difference per step / per FLOP / per second with its 95% CI and
Welch's p-value, the arm's tokens/s against the baseline's, and compare's verdict.
"""
from __future__ import annotations

import json
import subprocess
import sys

SWEEP = "extras-d4"
BASELINE_SEEDS = (1, 2, 3)
ARMS = {  # arm label -> (run-name infix, seeds)
    "all five": ("smearTrue-backoutTrue-muon_eqTrue-muon_plusTrue-normuonTrue", (1, 2, 3)),
    "--smear": ("smearTrue", (1, 2)),
    "--backout": ("backoutTrue", (1, 2)),
    "--muon-eq": ("muon_eqTrue", (1, 2)),
    "--muon-plus": ("muon_plusTrue", (1, 2)),
    "--normuon": ("normuonTrue", (1, 2)),
}
AXES = ("step", "flops", "time")


def compare(baseline: list[str], arm: list[str]) -> dict:
    done = subprocess.run(["picochat", "compare", *baseline, *arm, "--json"], capture_output=True, text=True)
    if done.returncode != 0 or "{" not in done.stdout:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"error: picochat compare {' '.join(arm)} failed ({last}); run the d4 sweep first "
              f"(experiments/README.md) with the same $PICOCHAT_HOME", file=sys.stderr)
        sys.exit(2)
    return json.loads(done.stdout[done.stdout.index("{"):])


def cell(significance: dict | None, difference: float | None) -> str:
    if significance is None:
        return "n/a" if difference is None else f"{difference:+.4f} (no CI)"
    s = significance
    return f"{s['difference']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}] p={s['p_value']:.3f}"


def main() -> None:
    baseline = [f"{SWEEP}-seed{s}" for s in BASELINE_SEEDS]
    print("| arm (seeds) | final bpb: baseline → arm | Δ bpb per step [95% CI] p | per FLOP | per second "
          "| tok/s: baseline → arm | verdict |")
    print("|---|---|---|---|---|---|---|")
    for label, (infix, seeds) in ARMS.items():
        arm = [f"{SWEEP}-{infix}-seed{s}" for s in seeds]
        result = compare(baseline, arm)
        [verdict] = result["verdicts"]
        base, cand = (result["throughput"][name] for name in result["groups"])
        cells = [cell(verdict["significance"][axis], verdict["differences"][axis]) for axis in AXES]
        print(f"| {label} ({len(seeds)}) | {base['val_bpb']:.4f} → {cand['val_bpb']:.4f} | {' | '.join(cells)} "
              f"| {base['tok_per_sec']:,.0f} → {cand['tok_per_sec']:,.0f} "
              f"({cand['tok_per_sec'] / base['tok_per_sec'] - 1:+.1%}) | {verdict['summary']} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
