"""The run registry: read what `picochat train` and `picochat eval` leave in `runs_dir()/NAME/`.

A run directory may hold `config.json` (the resolved TrainConfig), `env.json` (provenance),
`metrics.jsonl` (one record per step; eval steps add `val_bpb`), `checkpoints/step_*/`,
`core.json` and `bpb.json`. Every file is optional here: a run that crashed early still lists.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from picochat.checkpoint import list_checkpoints, run_dir
from picochat.errors import PicochatError
from picochat.runtime import runs_dir
from picochat.train.metrics import METRICS_FILE

CONFIG_FILE, ENV_FILE, CORE_FILE, BPB_FILE = "config.json", "env.json", "core.json", "bpb.json"


@dataclass
class Run:
    name: str
    path: Path
    config: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    core: dict | None = None
    bpb: dict | None = None

    def evals(self) -> list[dict]:
        """The records that carry a validation bpb, in step order."""
        return [r for r in self.metrics if isinstance(r.get("val_bpb"), (int, float))]


def read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is absent; a corrupt file is an error naming it."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PicochatError(f"{path} is not readable JSON ({e}); fix or delete it") from None
    return data if isinstance(data, dict) else None


def read_metrics_tolerant(path: Path) -> list[dict]:
    """metrics.jsonl records sorted by step; a torn last line (a crash mid-write) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    by_step = {r["step"]: r for r in records}  # a resumed run may have rewritten steps: keep the last
    return [by_step[s] for s in sorted(by_step)]


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in (CONFIG_FILE, METRICS_FILE))


def load_run(name_or_path: str | Path) -> Run:
    """A run by name (under runs_dir()) or by path."""
    path = Path(name_or_path).expanduser()
    if not is_run_dir(path) and len(Path(name_or_path).parts) == 1:  # a name: under runs_dir(), never beside it
        path = run_dir(str(name_or_path))
    if not is_run_dir(path):
        known = ", ".join(list_run_names()) or "none"
        raise PicochatError(f"no run {str(name_or_path)!r} (looked for {CONFIG_FILE} or {METRICS_FILE} in {path}); "
                            f"runs under {runs_dir()}: {known}")
    return Run(name=path.name, path=path, config=read_json(path / CONFIG_FILE) or {},
               env=read_json(path / ENV_FILE) or {}, metrics=read_metrics_tolerant(path / METRICS_FILE),
               core=read_json(path / CORE_FILE), bpb=read_json(path / BPB_FILE))


def list_run_names() -> list[str]:
    root = runs_dir()
    return sorted(p.name for p in root.iterdir() if is_run_dir(p)) if root.is_dir() else []


def list_runs() -> list[Run]:
    return [load_run(runs_dir() / name) for name in list_run_names()]


def mean(values: list[float]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def peak_memory(metrics: list[dict]) -> float | None:
    """The largest `peak_memory*` value any record carries (the trainer may log it per step)."""
    values = [v for r in metrics for k, v in r.items() if k.startswith("peak_mem") and isinstance(v, (int, float))]
    return max(values) if values else None


def steady_records(metrics: list[dict]) -> list[dict]:
    """Records past the first step, whose time includes compilation and allocator warm-up."""
    return [r for r in metrics if r.get("step", 0) > 1] or metrics


def run_status(run: Run) -> str:
    if not run.metrics:
        return "no metrics"
    last, planned = run.metrics[-1]["step"], run.config.get("num_iterations")
    if planned is None:
        return f"step {last}"
    return "finished" if last >= planned else f"stopped {last}/{planned}"


def summarize(run: Run) -> dict:
    """The numbers a run is judged by: final val bpb, CORE, tokens, FLOPs, wall-clock, throughput."""
    last = run.metrics[-1] if run.metrics else {}
    evals = run.evals()
    steady = steady_records(run.metrics)
    return {
        "name": run.name, "depth": run.config.get("depth"), "dataset": run.config.get("dataset"),
        "tokenizer": run.config.get("tokenizer"), "seed": run.config.get("seed"),
        "steps": last.get("step"), "num_iterations": run.config.get("num_iterations"),
        "tokens": last.get("tokens"), "flops": last.get("flops"), "time": last.get("time"),
        "final_loss": last.get("loss"),
        "val_bpb": evals[-1]["val_bpb"] if evals else None,
        "min_val_bpb": min(r["val_bpb"] for r in evals) if evals else None,
        "core": (run.core or {}).get("core"),
        "tok_per_sec": mean([r.get("tok_per_sec") for r in steady]),
        "mfu": mean([r.get("mfu") for r in steady]),
        "peak_memory": peak_memory(run.metrics),
        "world_size": run.env.get("world_size", 1),
        "device": run.env.get("device_name", run.env.get("device")),
        "checkpoints": len(list_checkpoints(run.path)),
        "status": run_status(run),
    }


def fmt(value, kind: str = "") -> str:
    """A table cell: '-' for missing; floats by kind (bpb 4 decimals, FLOPs in e-notation, percent)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "bpb":
        return f"{value:.4f}"
    if kind == "sci":
        return f"{value:.3g}"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "time":
        minutes, seconds = divmod(float(value), 60)
        return f"{int(minutes // 60)}:{int(minutes % 60):02d}:{seconds:04.1f}"
    if kind == "int":
        return f"{int(value):,}"
    return str(value)


LIST_COLUMNS = (("name", "name", ""), ("depth", "depth", ""), ("dataset", "dataset", ""), ("steps", "steps", "int"),
                ("tokens", "tokens", "sci"), ("FLOPs", "flops", "sci"), ("wall-clock", "time", "time"),
                ("val bpb", "val_bpb", "bpb"), ("CORE", "core", "bpb"), ("MFU", "mfu", "pct"),
                ("status", "status", ""))


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with left-aligned columns."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def format_run_list(summaries: list[dict]) -> str:
    rows = [[fmt(s[key], kind) for _, key, kind in LIST_COLUMNS] for s in summaries]
    return format_table([title for title, _, _ in LIST_COLUMNS], rows)


def describe_run(run: Run) -> dict:
    """Everything `runs show` prints: config, env, summary, last metrics, evals, checkpoints."""
    return {"name": run.name, "path": str(run.path), "summary": summarize(run), "config": run.config,
            "env": run.env, "last_metrics": run.metrics[-1] if run.metrics else None,
            "val_bpb": [{k: r.get(k) for k in ("step", "tokens", "flops", "time", "val_bpb")} for r in run.evals()],
            "core": run.core, "bpb": run.bpb, "checkpoints": [p.name for p in list_checkpoints(run.path)]}


def format_run_details(details: dict) -> str:
    s = details["summary"]
    lines = [f"run {details['name']} ({details['path']}): {s['status']}"]
    lines += [f"  {title:<11} {fmt(s[key], kind)}" for title, key, kind in LIST_COLUMNS[1:-1]]
    lines += [f"  {'tok/s':<11} {fmt(s['tok_per_sec'], 'sci')}", f"  {'peak memory':<11} {fmt(s['peak_memory'], 'sci')}"]
    for title in ("config", "env", "last_metrics"):
        lines.append(f"{title}:")
        lines += [f"  {k} = {v}" for k, v in (details[title] or {}).items()]
    lines.append("val bpb: " + (", ".join(f"step {e['step']}: {e['val_bpb']:.4f}" for e in details["val_bpb"]) or "none"))
    core = details["core"]
    lines.append(f"CORE: {fmt(core.get('core'), 'bpb')} (missing: {', '.join(core.get('missing', [])) or 'none'})"
                 if core else "CORE: not evaluated (picochat eval core --run NAME)")
    lines.append("checkpoints: " + (", ".join(details["checkpoints"]) or "none"))
    return "\n".join(lines)
