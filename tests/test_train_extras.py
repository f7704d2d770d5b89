"""`picochat train` with the reference's extras: --smear --backout --muon-eq --muon-plus --normuon reach the
model and optimizer, survive a checkpoint and --resume exactly, and --target-flops sets the horizon."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from picochat import checkpoint as ckpt
from picochat.config import add_config_args, config_from_args
from picochat.errors import PicochatError
from picochat.model.accounting import flops_per_token
from picochat.model.config import GPTConfig
from picochat.runtime import Runtime
from picochat.train import pretrain
from picochat.train.build import build_model, make_optimizer, model_config
from picochat.train.config import TrainConfig
from picochat.train.metrics import METRICS_FILE, read_metrics
from picochat.train.setup import prepare_run

from test_train import tiny_config, tiny_home  # noqa: F401  (tiny_home is a module fixture)

EXTRA_FLAGS = dict(smear=True, backout=True, muon_eq=True, muon_plus=True, normuon=True)
CPU = Runtime(torch.device("cpu"), torch.float32)


def test_each_flag_is_a_train_option():
    import argparse
    parser = argparse.ArgumentParser()
    add_config_args(parser, TrainConfig)
    args = parser.parse_args(["--smear", "--backout", "--muon-eq", "--muon-plus", "--normuon", "--target-flops", "3e12"])
    cfg = config_from_args(TrainConfig, args)
    assert {name: getattr(cfg, name) for name in EXTRA_FLAGS} == EXTRA_FLAGS and cfg.target_flops == 3e12


def optimizer_for(**flags):
    cfg = tiny_config(**flags, value_embedding_lr=0.1, resid_lambda_lr=0.01, x0_lambda_lr=0.5, weight_decay=0.0)
    model = build_model(model_config(cfg, vocab_size=300), CPU)
    return model, make_optimizer(model, cfg, CPU)


@pytest.mark.parametrize("on", [True, False])
def test_each_flag_reaches_the_model_and_the_optimizer(on):
    model, optimizer = optimizer_for(**dict.fromkeys(EXTRA_FLAGS, on))
    assert (model.smear_gate is not None, model.backout_lambda is not None) == (on, on)
    muon = [g for g in optimizer.param_groups if g["kind"] == "muon"]
    assert muon and all((g["muon_eq"], g["muon_plus"], g["normuon"]) == (on, on, on) for g in muon)
    smear_backout = [g for g in optimizer.param_groups if g["name"] == "smear_backout"]
    if on:  # nanochat's fixed LR, not the plan's batch-scaled ones
        assert smear_backout[0]["lr"] == 0.2 and len(smear_backout[0]["params"]) == 3
    else:
        assert smear_backout == []


def test_target_flops_gives_the_steps_the_arithmetic_says(tiny_home):
    shape = GPTConfig(depth=2, vocab_size=300, aspect_ratio=32, head_dim=32, max_seq_len=32, window_pattern="L",
                      smear=True)
    per_step = flops_per_token(shape) * 256  # FLOPs per token x tokens per step (total_batch_size)
    budget = 7.4 * per_step
    run = prepare_run(tiny_config(run="budget", num_iterations=None, target_flops=budget, smear=True), None, CPU)
    assert run.cfg.num_iterations == 7 and run.cfg.ratio is None  # the nearest whole step; no ratio set it
    assert json.loads((run.run_dir / "config.json").read_text())["target_flops"] == budget
    with pytest.raises(PicochatError, match="target_flops"):
        prepare_run(tiny_config(run="both", num_iterations=5, target_flops=budget), None, CPU)


@pytest.mark.slow
def test_a_run_with_every_extra_resumes_to_the_same_losses(tiny_home):
    pretrain.train(tiny_config(run="extras", **EXTRA_FLAGS))
    run = ckpt.run_dir("extras")
    uninterrupted = [r["loss"] for r in read_metrics(run / METRICS_FILE)]
    saved = json.loads((run / "config.json").read_text())
    assert {name: saved[name] for name in EXTRA_FLAGS} == EXTRA_FLAGS
    optimizer_state = torch.load(ckpt.checkpoint_path(run, 3) / "optim.pt", weights_only=True)
    assert any("second_momentum_buffer" in s for s in optimizer_state["state"].values())  # NorMuon's moments saved

    resumed_run = ckpt.run_dir("extras-resumed")
    shutil.copytree(run, resumed_run)
    shutil.rmtree(ckpt.checkpoint_path(resumed_run, 6))  # as if stopped right after step 3's checkpoint
    pretrain.train(tiny_config(run="extras-resumed", resume=True), explicit={"run", "resume"})
    resumed = [r["loss"] for r in read_metrics(resumed_run / METRICS_FILE)]
    assert resumed == uninterrupted  # exact: the extras' weights and NorMuon/MuonEq state came back


def test_compare_names_the_extras_as_config_differences_and_groups_runs_that_predate_them(home):
    from picochat.lab.compare import group_runs
    from picochat.lab.report import compare_runs, format_comparison
    from picochat.lab.runs import load_run
    from test_lab_runs import make_run
    make_run("plain-old", config={"seed": 1})  # a run from before the flags: its config.json lacks them
    make_run("plain-new", config={"seed": 2, **dict.fromkeys(EXTRA_FLAGS, False)}, bpb_at=lambda s: 2.01 - 0.05 * s)
    make_run("smeared", config={"smear": True, "normuon": True}, bpb_at=lambda s: 1.9 - 0.05 * s)
    runs = [load_run(name) for name in ("plain-old", "plain-new", "smeared")]
    assert [[r.name for r in g] for g in group_runs(runs)] == [["plain-old", "plain-new"], ["smeared"]]
    result = compare_runs(runs, home / "out", plots=False)
    assert result["verdicts"][0]["config_differences"] == {"smear": [False, True], "normuon": [False, True]}
    assert "config: smear False -> True, normuon False -> True" in format_comparison(result)
