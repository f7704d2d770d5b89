"""Atomic checkpoints: round trip, latest, keep-last-K, a crash mid-write, model reload for eval."""
from __future__ import annotations

import pytest
import torch

from picochat import checkpoint as ckpt
from picochat.errors import PicochatError


def small_states(value: float):
    model = {"w": torch.full((3, 3), value)}
    optim = {"state": {0: {"exp_avg": torch.full((3,), value)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return model, optim


def save(run, step, value=None, **kw):
    model, optim = small_states(float(step if value is None else value))
    return ckpt.save_checkpoint(run, step, model, optim, {"loop_state": {"step": step}}, **kw)


def test_round_trip_restores_weights_optimizer_meta_and_rng(tmp_path):
    torch.manual_seed(123)
    path = save(tmp_path, 7)
    expected_next = torch.rand(4)
    loaded = ckpt.load_checkpoint(path)
    assert path.name == "step_000007"
    assert torch.equal(loaded["model"]["w"], torch.full((3, 3), 7.0))
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], torch.full((3,), 7.0))
    assert loaded["meta"]["loop_state"] == {"step": 7} and loaded["meta"]["step"] == 7
    torch.rand(10)  # move the generator on, then restore it
    ckpt.restore_rng_states(loaded["rng"])
    assert torch.equal(torch.rand(4), expected_next)


def test_latest_is_the_highest_step_and_only_the_last_k_are_kept(tmp_path):
    for step in (10, 20, 30, 40):
        save(tmp_path, step, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000030", "step_000040"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000040"


def test_crash_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    save(tmp_path, 5)
    real_save, calls = torch.save, []

    def crash_on_second_file(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_second_file)
    with pytest.raises(OSError):
        save(tmp_path, 10, value=99)
    monkeypatch.setattr(torch, "save", real_save)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step_000005", "the half-written step 10 must not be listed"
    assert torch.equal(ckpt.load_checkpoint(latest)["model"]["w"], torch.full((3, 3), 5.0))
    assert list((tmp_path / "checkpoints").glob(".tmp-*")), "the crash left its temp dir behind"
    save(tmp_path, 15)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*")), "the next save cleans stale temp dirs"


def test_resolve_by_run_name_step_and_clear_error_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    run = ckpt.run_dir("r1")
    save(run, 3)
    save(run, 6)
    assert ckpt.resolve_checkpoint("r1").name == "step_000006"
    assert ckpt.resolve_checkpoint("r1", step=3).name == "step_000003"
    with pytest.raises(PicochatError, match="no checkpoint at step 4"):
        ckpt.resolve_checkpoint("r1", step=4)
    with pytest.raises(PicochatError, match="no checkpoint found for 'nope'.*r1"):
        ckpt.resolve_checkpoint("nope")
