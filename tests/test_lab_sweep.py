"""Sweeps and ladders with a fake trainer (a tiny script writing a run directory); one real sweep."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from picochat.cli import main
from picochat.errors import PicochatError
from picochat.lab.ladder import promoted, promotion_threshold, run_ladder
from picochat.lab.sweep import (SweepInterrupted, config_flags, expand, load_spec, read_results, run_name,
                                run_sweep)

# A stand-in for `picochat train`: records its argv, writes config.json and metrics.jsonl whose
# final val bpb is 1 + |weight_decay - 0.2| + 1/depth, and exits 130 (interrupted) for the run
# named in $FAKE_INTERRUPT.
FAKE_TRAINER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    args, config = sys.argv[1:], {}
    i = 0
    while i < len(args):
        key = args[i][2:].replace("-", "_")
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            config[key] = args[i + 1]; i += 2
        else:
            config[key] = True; i += 1
    home = Path(os.environ["PICOCHAT_HOME"])
    with open(home / "calls.txt", "a") as f:
        f.write(config["run"] + "\\n")
    if os.environ.get("FAKE_INTERRUPT") == config["run"]:
        sys.exit(130)
    depth, wd = int(config.get("depth", 2)), float(config.get("weight_decay", 0.2))
    run = home / "runs" / config["run"]
    run.mkdir(parents=True, exist_ok=True)
    config.update(depth=depth, weight_decay=wd, num_iterations=4, tokenizer="tok", dataset="toy")
    (run / "config.json").write_text(json.dumps(config))
    final = 1 + abs(wd - 0.2) + 1 / depth
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 5):
            record = dict(step=step, tokens=100 * step, flops=1e6 * depth * step, time=0.1 * step, loss=3.0,
                          lr=0.01, tok_per_sec=1000.0, mfu=0.1)
            if step % 2 == 0:
                record["val_bpb"] = final + (4 - step) * 0.1
            f.write(json.dumps(record) + "\\n")
""")


@pytest.fixture(autouse=True)
def no_fake_interrupt(monkeypatch):
    monkeypatch.delenv("FAKE_INTERRUPT", raising=False)


@pytest.fixture
def trainer(tmp_path) -> list[str]:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    return [sys.executable, str(script)]


def calls(home: Path) -> list[str]:
    path = home / "calls.txt"
    return path.read_text().split() if path.is_file() else []


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_expands_to_every_combination():
    runs = expand({"grid": {"depth": [2, 3], "weight_decay": [0.1, 0.2, 0.3]}})
    assert len(runs) == 6 and runs[0] == {"depth": 2, "weight_decay": 0.1} and runs[-1] == {"depth": 3, "weight_decay": 0.3}


def test_isoflop_expands_budgets_by_depths_from_yaml(home, trainer):
    # PyYAML reads 1e15 (no dot) as a string: the budget is still a number
    (home / "iso.yaml").write_text("base: {max_seq_len: 256}\nisoflop: {budgets: [1e15, 3.0e15], depths: [2, 3, 4]}\n")
    spec = load_spec(home / "iso.yaml")
    runs = expand(spec)
    assert runs == [{"target_flops": f, "depth": d} for f in (1e15, 3e15) for d in (2, 3, 4)]
    assert run_name("iso", runs[0]) == "iso-target_flops1e+15-depth2"
    rows = read_results(run_sweep(spec, trainer))
    assert [r["overrides"] for r in rows] == runs
    assert rows[0]["config"]["target_flops"] == "1000000000000000.0"  # the trainer got --target-flops


@pytest.mark.parametrize("isoflop,base,message", [
    ({"budgets": [1e15], "depths": [2, 3]}, {}, "3\\+ distinct"),
    ({"budgets": [], "depths": [2, 3, 4]}, {}, "budgets"),
    ({"budgets": ["lots"], "depths": [2, 3, 4]}, {}, "positive FLOP counts"),
    ({"budgets": [1e15]}, {}, "exactly budgets"),
    ({"budgets": [1e15], "depths": [2, 3, 4]}, {"num_iterations": 5}, "base sets num_iterations"),
])
def test_isoflop_spec_errors(isoflop, base, message):
    with pytest.raises(PicochatError, match=message):
        expand({"isoflop": isoflop, "base": base})


def test_names_and_flags():
    assert run_name("wd", {"depth": 2, "weight_decay": 0.1}) == "wd-depth2-weight_decay0.1"
    assert config_flags({"weight_decay": 0.1, "compile": False, "wandb": True, "ratio": None}) == \
        ["--weight-decay", "0.1", "--no-compile", "--wandb"]


def test_spec_errors_name_the_bad_field(home):
    with pytest.raises(PicochatError, match="weight_dekay"):
        load_spec(write_spec(home / "s.yaml", {"base": {"weight_dekay": 0.1}, "grid": {"depth": [2]}}))
    with pytest.raises(PicochatError, match="exactly one"):
        load_spec(write_spec(home / "s.yaml", {"grid": {"depth": [2]}, "runs": [{"depth": 2}]}))
    with pytest.raises(PicochatError, match="run:"):
        expand({"runs": [{"run": "x"}]})


def test_sweep_runs_every_config_and_writes_the_results_table(home, trainer):
    spec = load_spec(write_spec(home / "wd.yaml", {"base": {"num_iterations": 4},
                                                   "grid": {"weight_decay": [0.1, 0.2]}}))
    sweep_dir = run_sweep(spec, trainer)
    rows = {r["run"]: r for r in read_results(sweep_dir)}
    assert set(rows) == {"wd-weight_decay0.1", "wd-weight_decay0.2"}
    assert rows["wd-weight_decay0.2"]["summary"]["val_bpb"] == pytest.approx(1.5)
    assert rows["wd-weight_decay0.1"]["config"]["weight_decay"] == 0.1
    assert "wd-weight_decay0.1" in (sweep_dir / "results.md").read_text()
    assert (sweep_dir / "results.csv").read_text().splitlines()[0].startswith("run,weight_decay,status,val_bpb")


def test_an_interrupted_sweep_resumes_and_skips_finished_runs(home, trainer, monkeypatch):
    spec = load_spec(write_spec(home / "wd.yaml", {"grid": {"weight_decay": [0.1, 0.2, 0.3]}}))
    monkeypatch.setenv("FAKE_INTERRUPT", "wd-weight_decay0.2")
    with pytest.raises(SweepInterrupted, match="rerun"):
        run_sweep(spec, trainer)
    assert [r["run"] for r in read_results(home / "sweeps" / "wd")] == ["wd-weight_decay0.1"]
    monkeypatch.delenv("FAKE_INTERRUPT")
    run_sweep(spec, trainer)
    assert calls(home) == ["wd-weight_decay0.1", "wd-weight_decay0.2", "wd-weight_decay0.2", "wd-weight_decay0.3"]
    assert len(read_results(home / "sweeps" / "wd")) == 3


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(home, tmp_path):
    failing = tmp_path / "fail.py"
    failing.write_text("import sys; sys.exit(3)")
    spec = load_spec(write_spec(home / "f.yaml", {"grid": {"depth": [2, 3]}}))
    rows = read_results(run_sweep(spec, [sys.executable, str(failing)]))
    assert [(r["status"], r["returncode"]) for r in rows] == [("failed", 3), ("failed", 3)]


def test_promotion_rule():
    assert promotion_threshold("val_bpb improves by > 0.002") == 0.002
    assert promoted(1.50, {"a": 1.49, "b": 1.499, "c": None}, 0.005) == ["a"]
    with pytest.raises(PicochatError, match="promote_if"):
        promotion_threshold("loss goes down")


def test_ladder_promotes_only_winners(home, trainer):
    spec = load_spec(write_spec(home / "lad.yaml", {
        "base": {"weight_decay": 0.5},
        "ladder": {"rungs": [{"depth": 2}, {"depth": 3}],
                   "candidates": [{"name": "good", "overrides": {"weight_decay": 0.2}},
                                  {"name": "bad", "overrides": {"weight_decay": 0.9}}],
                   "promote_if": "val_bpb improves by > 0.01"}}))
    result = run_ladder(spec, trainer)
    assert result["rungs"][0]["promoted"] == ["good"]
    assert result["survivors"] == ["good"]
    assert "lad-r2-depth3-bad" not in calls(home)
    assert set(calls(home)) == {"lad-r1-depth2-baseline", "lad-r1-depth2-good", "lad-r1-depth2-bad",
                                "lad-r2-depth3-baseline", "lad-r2-depth3-good"}
    run_ladder(spec, trainer)  # resumable: nothing runs again
    assert len(calls(home)) == 5


def test_sweep_command_with_an_injected_trainer(home, trainer, capsys):
    spec = write_spec(home / "cli.yaml", {"runs": [{"depth": 2}, {"depth": 4}]})
    assert main(["sweep", str(spec), "--trainer-cmd", " ".join(trainer)]) == 0
    out = capsys.readouterr().out
    assert "cli-depth4" in out and "results.csv" in out


def tiny_dataset_and_tokenizer(home: Path) -> None:
    """A few hundred short documents and a 300-token BPE, made through the public APIs."""
    from picochat.data.dataset import ShardWriter  # noqa: PLC0415  (only the slow test needs these)
    from picochat.data.shards import write_manifest  # noqa: PLC0415
    from picochat.tokenizer import train_tokenizer  # noqa: PLC0415
    root = home / "datasets" / "tiny"
    words = "the cat sat on a mat while dogs ran over green hills and birds sang songs".split()
    docs = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40 + i % 30)) for i in range(400)]
    shards = {}
    for split, texts in (("train", docs[:360]), ("val", docs[360:])):
        writer = ShardWriter(root, split)
        for i, text in enumerate(texts):
            writer.add(text, i)
        writer.close_shard()
        shards[split] = writer.finished
    write_manifest(root, "tiny", "2026-01-01", {"by": "test"}, shards, {}, "test")
    train_tokenizer(docs, "tiny-tok", vocab_size=300, dataset="tiny")


@pytest.mark.slow
def test_a_real_sweep_of_the_trainer(home):
    """Two weight decays at depth 1 for a few steps through `python -m picochat train`."""
    tiny_dataset_and_tokenizer(home)
    base = {"dataset": "tiny", "tokenizer": "tiny-tok", "depth": 1, "aspect_ratio": 64, "head_dim": 64,
            "max_seq_len": 64, "device_batch_size": 2, "total_batch_size": 128, "num_iterations": 3,
            "eval_every": 0, "eval_tokens": 128, "sample_every": 0, "save_every": 0, "device": "cpu",
            "warmup_steps": 1}
    spec = load_spec(write_spec(home / "real.yaml", {"base": base, "grid": {"weight_decay": [0.0, 0.5]}}))
    rows = read_results(run_sweep(spec))
    assert [r["status"] for r in rows] == ["done", "done"], [r.get("returncode") for r in rows]
    for row in rows:
        assert row["summary"]["steps"] == 3 and row["summary"]["val_bpb"] > 0
    assert main(["compare", rows[0]["run"], rows[1]["run"], "--out", str(home / "cmp")]) == 0
    assert (home / "cmp" / "bpb_vs_time.png").is_file()
    assert json.loads((home / "runs" / rows[0]["run"] / "env.json").read_text())["world_size"] == 1
