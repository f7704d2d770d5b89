"""The committed experiment specs under experiments/ parse as sweeps, and every run they expand to is a valid
`picochat train` command line (the flags exist and resolve to a TrainConfig)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from picochat.config import add_config_args, config_from_args
from picochat.lab.sweep import config_flags, expand, load_spec, run_name
from picochat.train.config import TrainConfig

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))
EXTRAS = ("smear", "backout", "muon_eq", "muon_plus", "normuon")


def train_config(flags: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_args(parser, TrainConfig)
    return config_from_args(TrainConfig, parser.parse_args(flags))


@pytest.mark.parametrize("spec_path", EXPERIMENTS, ids=lambda p: p.name)
def test_each_spec_expands_to_valid_train_commands(spec_path):
    spec = load_spec(spec_path)
    runs = expand(spec)
    configs = [train_config(config_flags({**spec["base"], **overrides})) for overrides in runs]
    assert len({run_name(spec["name"], o) for o in runs}) == len(runs)  # no two runs share a name
    arms = {}
    for cfg in configs:
        arms.setdefault(tuple(getattr(cfg, f) for f in EXTRAS), set()).add(cfg.seed)
    assert len(arms[(False,) * 5]) >= 2  # a baseline with repeats in every spec


def test_the_cpu_rung_has_the_seeds_the_issue_asks_for():
    """d4: baseline and all five together 3+ seeds each, each extra alone 2+; all at one shape and budget."""
    arms: dict[tuple, set] = {}
    for path in (p for p in EXPERIMENTS if p.name.startswith("d4-")):
        spec = load_spec(path)
        assert spec["name"] == "extras-d4"  # one sweep: the baseline runs are shared, trained once
        for overrides in expand(spec):
            cfg = train_config(config_flags({**spec["base"], **overrides}))
            assert (cfg.depth, cfg.head_dim, cfg.max_seq_len, cfg.target_flops) == (4, 64, 512, 1.0e13)
            arms.setdefault(tuple(f for f in EXTRAS if getattr(cfg, f)), set()).add(cfg.seed)
    assert len(arms[()]) >= 3 and len(arms[EXTRAS]) >= 3
    assert all(len(arms[(f,)]) >= 2 for f in EXTRAS)


def test_the_table_script_says_what_to_run_first_when_the_runs_are_missing(home):
    script = Path(__file__).resolve().parents[1] / "experiments" / "extras_table.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: picochat compare") and "run the d4 sweep first" in line
