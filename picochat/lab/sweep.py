"""`picochat sweep SPEC.yaml`: a grid or list of training runs, one after another, resumable.

A spec is YAML: `base:` (TrainConfig fields every run shares), then `grid:` (field -> list of
values; every combination runs), `runs:` (a list of field overrides) or `isoflop:` (budgets ×
depths: every depth trained to each FLOP budget, for `picochat fit`'s isoFLOP parabolas),
optionally `name:` and `nproc:` (processes per run under torchrun). A `ladder:` spec runs the
seed's protocol instead (picochat/lab/ladder.py). Each run is `python -m picochat train ...` in a
subprocess; the sweep directory's `results.jsonl` records every finished run, so a rerun skips them.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from picochat.errors import PicochatError
from picochat.lab.runs import fmt, is_run_dir, load_run, summarize
from picochat.names import PLAIN_NAME_MAX, plain_name
from picochat.runtime import picochat_home, print0, runs_dir
from picochat.train.config import TrainConfig

RESULTS_FILE = "results.jsonl"
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
SPEC_KEYS = {"name", "base", "grid", "runs", "isoflop", "nproc", "ladder"}
MODES = ("grid", "runs", "isoflop", "ladder")
# The isoFLOP mode sets these per run; a base that also set them would fight it.
ISOFLOP_FIELDS = ("target_flops", "depth", "num_iterations", "ratio")
INTERRUPTED_CODES = {130, -2, -15}  # SIGINT / SIGTERM: the trainer saved and stopped; rerun resumes it


class SweepInterrupted(PicochatError):
    """A run was interrupted; the sweep stops and a rerun continues from it."""


def sweeps_dir() -> Path:
    return picochat_home() / "sweeps"


def load_spec(path: str | Path) -> dict:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PicochatError(f"sweep spec {path} does not exist") from None
    except yaml.YAMLError as e:
        raise PicochatError(f"sweep spec {path} is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise PicochatError(f"sweep spec {path} must be a mapping with base: and grid:, runs:, isoflop: or ladder:")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise PicochatError(f"sweep spec {path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SPEC_KEYS))}")
    if sum(k in spec for k in MODES) != 1:
        raise PicochatError(f"sweep spec {path} needs exactly one of grid:, runs:, isoflop: or ladder:")
    spec.setdefault("name", path.stem)
    spec.setdefault("base", {})
    spec.setdefault("nproc", 1)
    check_fields(spec["base"], f"{path}: base")
    return spec


def check_fields(overrides: dict, where: str) -> None:
    """Every key a TrainConfig field, and never `run` (the sweep names its runs)."""
    if not isinstance(overrides, dict):
        raise PicochatError(f"{where} must be a mapping of TrainConfig field: value, got {overrides!r}")
    unknown = sorted(set(overrides) - TRAIN_FIELDS)
    if unknown:
        raise PicochatError(f"{where}: {', '.join(unknown)} {'is not a' if len(unknown) == 1 else 'are not'} "
                            f"TrainConfig field(s); see `picochat train --help` (use underscores: weight_decay)")
    if "run" in overrides:
        raise PicochatError(f"{where}: do not set run:, the sweep names each run itself")


def expand(spec: dict) -> list[dict]:
    """The overrides of each run: every combination of `grid`, the `runs` list, or the isoFLOP pairs."""
    if "isoflop" in spec:
        return isoflop_runs(spec["isoflop"], spec["base"])
    if "grid" in spec:
        grid = spec["grid"]
        check_fields(grid, "grid")
        bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
        if bad:
            raise PicochatError(f"grid: {', '.join(bad)} must map to a non-empty list of values")
        return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    runs = spec["runs"]
    if not isinstance(runs, list) or not runs:
        raise PicochatError("runs: must be a non-empty list of field overrides")
    for i, overrides in enumerate(runs):
        check_fields(overrides, f"runs[{i}]")
    return [dict(r) for r in runs]


def isoflop_runs(isoflop: dict, base: dict) -> list[dict]:
    """`isoflop: {budgets: [F, ...], depths: [d, ...]}` -> {target_flops: F, depth: d} for every pair,
    budget by budget. Each budget needs 3+ depths: the fit is a parabola through them."""
    if not isinstance(isoflop, dict) or set(isoflop) != {"budgets", "depths"}:
        raise PicochatError("isoflop: needs exactly budgets: [FLOPs, ...] and depths: [3+ depths], "
                            "e.g. {budgets: [1.0e14, 3.0e14], depths: [2, 3, 4, 6]}")
    clash = sorted(set(base) & set(ISOFLOP_FIELDS))
    if clash:
        raise PicochatError(f"isoflop: base sets {', '.join(clash)}, which the isoFLOP mode sets per run; remove it from base:")
    budgets, depths = isoflop["budgets"], isoflop["depths"]
    if not isinstance(budgets, list) or not budgets or not all(positive_number(b) for b in budgets):
        raise PicochatError(f"isoflop budgets: must be a non-empty list of positive FLOP counts, got {budgets!r}")
    if (not isinstance(depths, list) or len(set(depths)) < 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in depths)):
        raise PicochatError(f"isoflop depths: must list 3+ distinct positive integers (a parabola needs three), got {depths!r}")
    return [{"target_flops": float(budget), "depth": depth} for budget in budgets for depth in depths]


def positive_number(value) -> bool:
    """A positive number, or a string of one: YAML 1.1 reads 1e15 (no dot) as a string."""
    try:
        return not isinstance(value, bool) and float(value) > 0
    except (TypeError, ValueError):
        return False


def run_name(prefix: str, overrides: dict) -> str:
    """A readable plain name (picochat/names.py): prefix-weight_decay0.1-depth2; an overlong one is cut and
    ends in a hash of the whole, so two grid points never share a run."""
    parts = [prefix] + [f"{key}{short_value(value)}" for key, value in overrides.items()]
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts)))
    if len(name) > PLAIN_NAME_MAX:
        name = name[:PLAIN_NAME_MAX - 9] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def short_value(value) -> str:
    """A float in its shortest exact form (1e+15, not 1000000000000000.0); anything else as str()."""
    if isinstance(value, float) and float(short := format(value, ".12g")) == value:
        return short
    return str(value)


def config_flags(config: dict) -> list[str]:
    """TrainConfig fields as `picochat train` flags (booleans as --x / --no-x)."""
    flags = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def default_trainer_cmd(nproc: int) -> list[str]:
    if nproc > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m", "picochat", "train"]
    return [sys.executable, "-m", "picochat", "train"]


class SweepState:
    """A sweep directory: runs each configuration once, records it in results.jsonl, skips it on rerun."""

    def __init__(self, name: str, trainer_cmd: list[str], root: Path | None = None):
        self.name, self.trainer_cmd = name, trainer_cmd
        self.dir = (root or sweeps_dir()) / plain_name(name, "sweep name (name: in the spec, else the file's stem)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.results = {row["run"]: row for row in read_results(self.dir)}

    def execute(self, run: str, config: dict, overrides: dict, extra: dict | None = None) -> dict:
        """Train `run` unless the results file already has it; returns its results row."""
        if run in self.results:
            print0(f"[sweep {self.name}] {run}: already {self.results[run]['status']}, skipped")
            return self.results[run]
        resume = is_run_dir(runs_dir() / run) and (runs_dir() / run / "checkpoints").is_dir()
        command = self.trainer_cmd + config_flags({**config, "run": run}) + (["--resume"] if resume else [])
        print0(f"[sweep {self.name}] {run}: {' '.join(command)}")
        started = time.perf_counter()
        code = stream_to_log(command, self.dir / "logs" / f"{run}.log")
        if code in INTERRUPTED_CODES:
            raise SweepInterrupted(f"run {run} was interrupted (exit {code}); rerun the same `picochat sweep` "
                                   f"command to continue (finished runs are skipped, this one resumes)")
        row = {"run": run, "overrides": overrides, **(extra or {}), "status": "done" if code == 0 else "failed",
               "returncode": code, "seconds": round(time.perf_counter() - started, 2), **run_facts(run)}
        self.record(row)
        print0(f"[sweep {self.name}] {run}: {row['status']}, val bpb {fmt(row['summary'].get('val_bpb'), 'bpb')}")
        return row

    def record(self, row: dict) -> None:
        self.results[row["run"]] = row
        with open(self.dir / RESULTS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")


def run_facts(run: str) -> dict:
    """The run's summary and resolved config, read back from its directory (empty if it left none)."""
    if not is_run_dir(runs_dir() / run):
        return {"summary": {}, "config": {}}
    record = load_run(runs_dir() / run)
    return {"summary": summarize(record), "config": record.config}


def stream_to_log(command: list[str], log: Path) -> int:
    """Run `command`, echoing its output and saving it to `log`; returns the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "w") as f, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                  text=True, bufsize=1) as proc:
            for line in proc.stdout:
                f.write(line)
                print(line, end="", flush=True)
            return proc.wait()
    except FileNotFoundError:
        raise PicochatError(f"cannot start the trainer {command[0]!r}; is it installed and on PATH?") from None
    except KeyboardInterrupt:
        return 130


def read_results(sweep_dir: Path) -> list[dict]:
    """results.jsonl rows, the last record of each run winning; a torn last line is skipped."""
    path = Path(sweep_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["run"]] = row
    return list(rows.values())


def run_sweep(spec: dict, trainer_cmd: list[str] | None = None) -> Path:
    """Every run of a grid/list spec, in order; returns the sweep directory."""
    runs = expand(spec)
    state = SweepState(spec["name"], trainer_cmd or default_trainer_cmd(int(spec["nproc"])))
    (state.dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    for i, overrides in enumerate(runs, 1):
        name = run_name(spec["name"], overrides)
        print0(f"[sweep {spec['name']}] run {i}/{len(runs)}: {name}")
        state.execute(name, {**spec["base"], **overrides}, overrides)
    write_results_table(state.dir, list(state.results.values()))
    return state.dir


TABLE_COLUMNS = (("val bpb", "val_bpb", "bpb"), ("steps", "steps", "int"), ("tokens", "tokens", "sci"),
                 ("FLOPs", "flops", "sci"), ("wall-clock", "time", "time"), ("tok/s", "tok_per_sec", "sci"),
                 ("MFU", "mfu", "pct"))


def results_rows(rows: list[dict], raw: bool = False) -> tuple[list[str], list[list]]:
    """The results table: run, the swept fields, status, then the summary (formatted, or raw for CSV)."""
    swept = list(dict.fromkeys(k for row in rows for k in row.get("overrides", {})))
    columns = [(key if raw else title, key, kind) for title, key, kind in TABLE_COLUMNS]
    header = ["run", *swept, "status", *(title for title, _, _ in columns)]
    table = [[row["run"], *(row.get("overrides", {}).get(k, "") for k in swept), row["status"],
              *((row.get("summary", {}).get(key) if raw else fmt(row.get("summary", {}).get(key), kind))
                for _, key, kind in columns)] for row in rows]
    return header, table


def write_results_table(sweep_dir: Path, rows: list[dict]) -> tuple[Path, Path]:
    """results.md and results.csv beside results.jsonl."""
    header, table = results_rows(rows)
    md, table_csv = sweep_dir / "results.md", sweep_dir / "results.csv"
    md.write_text("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                            + ["| " + " | ".join(map(str, r)) + " |" for r in table]) + "\n")
    raw_header, raw_table = results_rows(rows, raw=True)
    with open(table_csv, "w", newline="") as f:
        csv.writer(f).writerows([raw_header, *raw_table])
    return md, table_csv


def resolve_sweep_dir(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if (path / RESULTS_FILE).is_file():
        return path
    if (sweeps_dir() / plain_name(str(name_or_path), "sweep name") / RESULTS_FILE).is_file():
        return sweeps_dir() / str(name_or_path)
    known = sorted(p.name for p in sweeps_dir().iterdir()) if sweeps_dir().is_dir() else []
    raise PicochatError(f"no sweep results at {path} or {sweeps_dir() / str(name_or_path)} (no {RESULTS_FILE}); "
                        f"sweeps: {', '.join(known) or 'none'}; run one with `picochat sweep SPEC.yaml`")
