"""The run registry reads what `picochat train` writes; run directories here are written by hand.

`make_run` is shared with the other lab tests (they import it from this module).
"""
from __future__ import annotations

import json

import pytest

from picochat.cli import main
from picochat.errors import PicochatError
from picochat.lab.runs import list_runs, load_run, read_metrics_tolerant, summarize
from picochat.runtime import runs_dir

BASE_CONFIG = {"dataset": "toy", "tokenizer": "toy-tok", "depth": 2, "max_seq_len": 64, "total_batch_size": 256,
               "loader_mode": "bestfit", "eval_tokens": 1024, "num_iterations": 10, "seed": 42, "weight_decay": 0.2}


def make_run(name: str, bpb_at=lambda step: 2.0 - 0.05 * step, steps: int = 10, seconds_per_step: float = 1.0,
             flops_per_step: float = 1e9, eval_every: int = 2, config: dict | None = None, env: dict | None = None,
             tokens_per_step: int = 256, extra: dict | None = None):
    """A run directory as the trainer leaves it: config.json, env.json, metrics.jsonl."""
    path = runs_dir() / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({**BASE_CONFIG, "run": name, "num_iterations": steps,
                                                  **(config or {})}))
    (path / "env.json").write_text(json.dumps({"commit": "abc", "dirty": False, "torch": "2.x", "device": "cpu",
                                               "device_name": "cpu", "dtype": "float32", "world_size": 1, **(env or {})}))
    with open(path / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            record = {"step": step, "tokens": step * tokens_per_step, "flops": step * flops_per_step,
                      "time": step * seconds_per_step, "loss": 3.0 - 0.1 * step, "lr": 0.02,
                      "tok_per_sec": tokens_per_step / seconds_per_step, "mfu": 0.3, **(extra or {})}
            if step % eval_every == 0 or step == steps:
                record["val_bpb"] = bpb_at(step)
            f.write(json.dumps(record) + "\n")
    return path


def test_summary_reads_the_last_record_and_the_last_evaluation(home):
    make_run("a", steps=10, seconds_per_step=0.5)
    s = summarize(load_run("a"))
    assert (s["steps"], s["tokens"], s["flops"], s["time"]) == (10, 2560, 1e10, 5.0)
    assert s["val_bpb"] == pytest.approx(1.5)
    assert s["tok_per_sec"] == pytest.approx(512)
    assert s["status"] == "finished" and s["core"] is None


def test_core_and_peak_memory_are_picked_up_when_present(home):
    path = make_run("a", extra={"peak_memory_mib": 123.0})
    (path / "core.json").write_text(json.dumps({"core": 0.123, "tasks": {}, "missing": []}))
    s = summarize(load_run("a"))
    assert s["core"] == 0.123 and s["peak_memory"] == 123.0


def test_a_stopped_run_and_a_run_without_metrics_still_list(home):
    make_run("stopped", steps=4, config={"num_iterations": 10})
    (runs_dir() / "empty").mkdir()
    (runs_dir() / "empty" / "config.json").write_text("{}")
    (runs_dir() / "not-a-run").mkdir()
    statuses = {r.name: summarize(r)["status"] for r in list_runs()}
    assert statuses == {"stopped": "stopped 4/10", "empty": "no metrics"}


def test_a_torn_last_line_is_skipped(home):
    path = make_run("a", steps=3)
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "tok')
    assert [r["step"] for r in read_metrics_tolerant(path / "metrics.jsonl")] == [1, 2, 3]


def test_unknown_run_names_the_known_ones(home):
    make_run("known")
    with pytest.raises(PicochatError, match="known"):
        load_run("nope")


def test_runs_list_and_show_commands(home, capsys):
    make_run("alpha")
    make_run("beta", steps=6)
    assert main(["runs", "list"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "beta" in out and "val bpb" in out
    assert main(["runs", "list", "--json"]) == 0
    assert {s["name"] for s in json.loads(capsys.readouterr().out)} == {"alpha", "beta"}
    assert main(["runs", "show", "beta", "--json"]) == 0
    details = json.loads(capsys.readouterr().out)
    assert details["summary"]["steps"] == 6 and details["config"]["depth"] == 2
    assert [e["step"] for e in details["val_bpb"]] == [2, 4, 6]
    assert main(["runs", "show", "beta"]) == 0
    assert "CORE: not evaluated" in capsys.readouterr().out
