"""The seed's sweep protocol (§2) as a ladder: quick rung, target rung, production rung.

    ladder:
      rungs: [{depth: 4}, {depth: 6}, {depth: 8}]     # smallest first
      baseline: {}                                     # overrides of the reference config
      candidates: [{name: wd-high, overrides: {weight_decay: 0.3}}]
      promote_if: "val_bpb improves by > 0.001"

At each rung the baseline and the surviving candidates train with base + rung + overrides; a
candidate goes up only if its final val bpb beats the baseline's by more than the threshold,
because gains found small shrink or flip at scale ("fine-tuned d12 hyperparameters actively
hurt d20"). Runs are recorded in the sweep's results file, so a ladder resumes like a sweep.
"""
from __future__ import annotations

import re

import yaml

from picochat.errors import PicochatError
from picochat.lab.sweep import SweepState, check_fields, default_trainer_cmd, run_name, write_results_table
from picochat.runtime import print0

PROMOTE_RULE = re.compile(r"^\s*val_bpb\s+improves\s+by\s*>\s*([0-9.eE+-]+)\s*$")


def promotion_threshold(rule) -> float:
    """`promote_if: "val_bpb improves by > 0.001"` (or a bare number) -> 0.001."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return float(rule)
    match = PROMOTE_RULE.match(str(rule))
    if not match:
        raise PicochatError(f'ladder promote_if {rule!r} is not understood; write "val_bpb improves by > 0.001"')
    return float(match.group(1))


def check_ladder(ladder: dict) -> dict:
    if not isinstance(ladder, dict) or not isinstance(ladder.get("rungs"), list) or not ladder["rungs"]:
        raise PicochatError("ladder: needs rungs: [a list of overrides, smallest first], e.g. [{depth: 4}, {depth: 8}]")
    candidates = ladder.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise PicochatError("ladder: needs candidates: [{name: NAME, overrides: {field: value}}, ...]")
    for i, rung in enumerate(ladder["rungs"]):
        check_fields(rung, f"ladder rungs[{i}]")
    check_fields(ladder.get("baseline") or {}, "ladder baseline")
    names = []
    for i, c in enumerate(candidates):
        if not isinstance(c, dict) or "name" not in c:
            raise PicochatError(f"ladder candidates[{i}] needs a name: and overrides:")
        check_fields(c.get("overrides") or {}, f"ladder candidate {c['name']}")
        names.append(str(c["name"]))
    if len(set(names)) != len(names) or "baseline" in names:
        raise PicochatError(f"ladder candidate names must be unique and not 'baseline', got {names}")
    return {"rungs": ladder["rungs"], "baseline": ladder.get("baseline") or {},
            "candidates": {str(c["name"]): c.get("overrides") or {} for c in candidates},
            "threshold": promotion_threshold(ladder.get("promote_if", 0.0))}


def rung_label(index: int, rung: dict) -> str:
    return f"r{index}-" + run_name("", rung).lstrip("-") if rung else f"r{index}"


def promoted(baseline_bpb: float | None, results: dict[str, float | None], threshold: float) -> list[str]:
    """Candidates whose final val bpb beats the baseline's by more than `threshold`."""
    if baseline_bpb is None:
        return []
    return [name for name, bpb in results.items() if bpb is not None and baseline_bpb - bpb > threshold]


def run_ladder(spec: dict, trainer_cmd: list[str] | None = None) -> dict:
    """Climb the rungs; returns {"rungs": [...per-rung results...], "survivors": [...], "dir": ...}."""
    ladder = check_ladder(spec["ladder"])
    state = SweepState(spec["name"], trainer_cmd or default_trainer_cmd(int(spec["nproc"])))
    (state.dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    alive = list(ladder["candidates"])
    history = []
    for index, rung in enumerate(ladder["rungs"], 1):
        label = rung_label(index, rung)
        print0(f"[ladder {spec['name']}] rung {index}/{len(ladder['rungs'])} ({label}): baseline + {', '.join(alive) or 'nothing'}")
        finals = {}
        for candidate in ["baseline", *alive]:
            overrides = ladder["baseline"] if candidate == "baseline" else {**ladder["baseline"], **ladder["candidates"][candidate]}
            row = state.execute(f"{spec['name']}-{label}-{candidate}", {**spec["base"], **rung, **overrides},
                                {**rung, **overrides}, {"rung": index, "candidate": candidate})
            finals[candidate] = row.get("summary", {}).get("val_bpb") if row["status"] == "done" else None
        baseline_bpb = finals.pop("baseline")
        alive = promoted(baseline_bpb, finals, ladder["threshold"])
        history.append({"rung": index, "label": label, "baseline_bpb": baseline_bpb, "candidates": finals,
                        "promoted": alive})
        print0(f"[ladder {spec['name']}] rung {index}: baseline {baseline_bpb}; promoted: {', '.join(alive) or 'none'}")
        if not alive:
            break
    write_results_table(state.dir, list(state.results.values()))
    survivors = alive if len(history) == len(ladder["rungs"]) else []
    (state.dir / "ladder.md").write_text(format_ladder(history, survivors, ladder["threshold"]) + "\n")
    return {"rungs": history, "survivors": survivors, "dir": str(state.dir)}


def format_ladder(history: list[dict], survivors: list[str], threshold: float) -> str:
    lines = [f"promotion rule: val bpb below the baseline's by more than {threshold}", ""]
    for rung in history:
        lines.append(f"rung {rung['rung']} ({rung['label']}): baseline {rung['baseline_bpb']}")
        for name, bpb in rung["candidates"].items():
            delta = "" if bpb is None or rung["baseline_bpb"] is None else f" ({bpb - rung['baseline_bpb']:+.4f})"
            lines.append(f"  {name}: {bpb}{delta}{'  -> promoted' if name in rung['promoted'] else ''}")
    lines.append("")
    lines.append("changes that survive the top rung: " + (", ".join(survivors) or "none (keep the baseline)"))
    return "\n".join(lines)
