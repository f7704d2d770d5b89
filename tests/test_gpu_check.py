"""benchmarks/gpu_check.py on a CPU: --dry-run lists every check, the tiny CPU path runs what a CPU can
and says what it skipped and why, and a failure exits 1 naming the first check that failed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402

NAMES = [check.name for check in gpu_check.CHECKS]


def test_dry_run_lists_every_check_and_why_the_cpu_skips_some(capsys):
    assert gpu_check.main(["--device", "cpu", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == NAMES
    verdicts = {line.split()[0]: line.split()[1] for line in lines}
    assert verdicts == {"matmul": "run:", "data": "run:", "train": "run:", "train_fp8": "skip:",
                        "attention": "skip:", "decode": "run:", "nccl": "skip:"}
    assert "SM >= 89" in lines[NAMES.index("train_fp8")] and "2 GPUs" in lines[NAMES.index("nccl")]


def test_a_failed_check_exits_1_naming_it_and_the_rest_still_run(home, tmp_path, capsys):
    # training without the data check's tokenizer fails; the checks after it are still taken in turn
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path), "--only", "train,attention,nccl"]) == 1
    assert "first failed check: train: RuntimeError: no tokenizer" in capsys.readouterr().err
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(c["check"], c["status"]) for c in report["checks"]] == [
        ("train", "failed"), ("attention", "skipped"), ("nccl", "skipped")]
    assert "| train | failed |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_cpu_path_runs_its_tiny_checks_and_skips_the_gpu_only_ones(home, tmp_path):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path)]) == 0
    checks = {c["check"]: c for c in json.loads((tmp_path / "gpu_check.json").read_text())["checks"]}
    assert list(checks) == NAMES
    assert {name for name, c in checks.items() if c["status"] == "ok"} == {"matmul", "data", "train", "decode"}
    assert all(c["reason"] for c in checks.values() if c["status"] == "skipped")
    train = checks["train"]["result"]
    assert train["val_bpb_last"] < train["val_bpb_first"] and train["tok_per_sec"] > 0
    assert set(checks["decode"]["result"]) >= {"batch1", "batch32"}
