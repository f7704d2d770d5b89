"""Comparison on three axes: interpolation at common points, verdicts, noise groups, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from picochat.cli import main
from picochat.lab.compare import Curve, common_grid, compare_axis, group_noise, group_runs, interpolate
from picochat.lab.report import compare_runs
from picochat.lab.runs import load_run
from picochat.lab.verdict import AxisVerdict, comparability_problems, summary_sentence
from test_lab_runs import make_run


def test_common_grid_spans_only_the_overlap():
    grid = common_grid([Curve(np.array([0.0, 10.0]), np.array([1.0, 0.0])),
                        Curve(np.array([2.0, 20.0]), np.array([1.0, 0.0]))], points=5)
    assert grid[0] == 2.0 and grid[-1] == 10.0 and len(grid) == 5


def test_disjoint_curves_have_no_common_grid():
    assert len(common_grid([Curve(np.array([0.0, 1.0]), np.zeros(2)), Curve(np.array([2.0, 3.0]), np.zeros(2))])) == 0


def test_interpolation_is_linear_between_evaluations():
    curve = Curve(np.array([10.0, 0.0]), np.array([1.0, 2.0]))  # unsorted on purpose
    assert interpolate(curve, np.array([0.0, 2.5, 10.0])) == pytest.approx([2.0, 1.75, 1.0])


def test_axis_difference_is_taken_at_the_last_common_point(home):
    make_run("a", bpb_at=lambda s: 2.0 - 0.05 * s, steps=10)
    make_run("b", bpb_at=lambda s: 2.0 - 0.08 * s, steps=8, config={"weight_decay": 0.3})
    comparison = compare_axis(group_runs([load_run("a"), load_run("b")]), "step")
    assert comparison.grid[-1] == 8
    assert comparison.difference(1) == pytest.approx((2.0 - 0.64) - (2.0 - 0.40))


def test_better_per_step_but_slower_is_not_a_wall_clock_gain(home):
    # b learns 1.5x faster per step but each step takes 2x as long.
    make_run("a", bpb_at=lambda s: 2.0 - 0.04 * s, seconds_per_step=1.0)
    make_run("b", bpb_at=lambda s: 2.0 - 0.06 * s, seconds_per_step=2.0, config={"weight_decay": 0.3})
    result = compare_runs([load_run("a"), load_run("b")], home / "out", plots=False)
    verdict = result["verdicts"][0]
    assert verdict["summary"] == "better per step, worse per second: not a wall-clock gain"
    assert verdict["differences"]["step"] == pytest.approx(-0.2)
    # at 10 s: a is at step 10 (1.6), b at step 5 (1.7)
    assert verdict["differences"]["time"] == pytest.approx(0.1)
    assert verdict["gain"] is False
    assert "stands" in result["winner"]


def test_faster_and_better_is_a_gain_and_the_winner(home):
    make_run("a", bpb_at=lambda s: 2.0 - 0.04 * s)
    make_run("b", bpb_at=lambda s: 2.0 - 0.05 * s, seconds_per_step=0.8, config={"weight_decay": 0.3})
    result = compare_runs([load_run("a"), load_run("b")], home / "out", plots=False)
    assert result["verdicts"][0]["summary"] == "better on every axis: a real gain"
    assert result["winner"].startswith("b beats the baseline a")


def test_each_candidate_is_compared_on_the_range_it_shares_with_the_baseline(home):
    make_run("a", bpb_at=lambda s: 2.0 - 0.05 * s, steps=10)
    make_run("b", bpb_at=lambda s: 2.0 - 0.06 * s, steps=10, config={"weight_decay": 0.3})
    make_run("short", bpb_at=lambda s: 2.0 - 0.05 * s, steps=4, config={"weight_decay": 0.4})
    result = compare_runs([load_run("a"), load_run("b"), load_run("short")], home / "out", plots=False)
    assert result["verdicts"][0]["differences"]["step"] == pytest.approx(-0.1)  # at step 10, not 4


@pytest.mark.parametrize("field,other", [("tokenizer", "other-tok"), ("loader_mode", "greedy"),
                                         ("eval_tokens", 2048), ("dataset", "other")])
def test_no_winner_when_the_validation_differs(home, field, other):
    make_run("a", bpb_at=lambda s: 2.0 - 0.04 * s)
    make_run("b", bpb_at=lambda s: 1.0 - 0.04 * s, config={field: other})
    runs = [load_run("a"), load_run("b")]
    assert any(field.split("_")[0] in p or "validation set" in p for p in comparability_problems(runs))
    result = compare_runs(runs, home / "out", plots=False)
    assert result["winner"].startswith("no winner called")
    assert result["verdicts"][0]["gain"] is None


def test_same_config_runs_form_one_group_and_their_spread_is_the_noise(home):
    make_run("a1", bpb_at=lambda s: 2.0 - 0.04 * s, config={"seed": 1})
    make_run("a2", bpb_at=lambda s: 2.02 - 0.04 * s, config={"seed": 2})
    make_run("b", bpb_at=lambda s: 1.995 - 0.04 * s, config={"weight_decay": 0.3})
    groups = group_runs([load_run("a1"), load_run("a2"), load_run("b")])
    assert [[r.name for r in g] for g in groups] == [["a1", "a2"], ["b"]]
    assert group_noise(groups[0]) == pytest.approx(0.02)
    result = compare_runs([load_run(n) for n in ("a1", "a2", "b")], home / "out", plots=False)
    # b is 0.015 better than a's mean (offsets 2.01 -> 1.995), inside the 0.02 noise: not significant
    verdict = result["verdicts"][0]
    assert verdict["differences"]["step"] == pytest.approx(-0.015)
    assert "not significant" in verdict["axes"]["step"]
    assert verdict["summary"] == "no difference beyond the noise on any axis"


def test_a_difference_beyond_the_noise_is_called():
    verdict = AxisVerdict("flops", -0.05, noise=0.01)
    assert verdict.direction == "better" and "exceeds the run-to-run noise" in verdict.describe()


def test_worse_per_step_better_per_second_is_a_throughput_gain():
    verdicts = {"step": AxisVerdict("step", 0.1, None), "flops": AxisVerdict("flops", 0.1, None),
                "time": AxisVerdict("time", -0.1, None)}
    assert summary_sentence(verdicts).startswith("worse per step, better per second")


@pytest.mark.slow
def test_compare_command_writes_plots_and_reports(home, capsys):
    make_run("a", bpb_at=lambda s: 2.0 - 0.04 * s, extra={"peak_memory": 1e9})
    make_run("b", bpb_at=lambda s: 2.0 - 0.06 * s, seconds_per_step=2.0, config={"weight_decay": 0.3})
    assert main(["compare", "a", "b", "--out", str(home / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "not a wall-clock gain" in out
    for name in ("bpb_vs_step.png", "bpb_vs_flops.png", "bpb_vs_time.png", "delta_vs_time.png", "tok_per_sec.png"):
        assert (home / "cmp" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (home / "cmp" / "compare.md").read_text()
    assert "![bpb vs step](bpb_vs_step.png)" in md and "not a wall-clock gain" in md
    assert "<img src='bpb_vs_time.png'" in (home / "cmp" / "compare.html").read_text()
    assert main(["compare", "a", "b", "--json", "--out", str(home / "cmp")]) == 0
    assert json.loads(capsys.readouterr().out)["throughput"]["a"]["peak_memory"] == 1e9
