"""Power-law fits recover known exponents from noisy synthetic sweeps; constants feed `plan`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from picochat.cli import main
from picochat.errors import PicochatError
from picochat.lab.fit import (compute_frontier, fit_batch, fit_isoflop, fit_loss, fit_power_law, fit_ratio,
                              fit_weight_decay, fitted_constants, isoflop_optima, optima, scaling_params_of, width_of,
                              write_constants)
from picochat.lab.sweep import RESULTS_FILE
from picochat.model.accounting import flops_per_token, scaling_params
from picochat.model.config import GPTConfig
from picochat.scaling import load_constants


def row(overrides: dict, config: dict, bpb: float, tokens: float = 1e6, flops: float = 1e12) -> dict:
    return {"run": json.dumps(overrides), "overrides": overrides, "status": "done", "config": {**overrides, **config},
            "summary": {"val_bpb": bpb, "tokens": tokens, "flops": flops}}


def test_fit_recovers_a_known_exponent_within_its_interval():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e6, 1e10, 12)
    y = 3.0 * x ** 0.383 * np.exp(rng.normal(0, 0.05, len(x)))
    law = fit_power_law(x, y)
    low, high = law.ci
    assert abs(law.exponent - 0.383) < 0.03
    assert low < 0.383 < high and high - low < 0.1
    assert law.coefficient == pytest.approx(3.0, rel=0.5) and law.r2 > 0.99


def test_exact_data_gives_a_zero_width_interval():
    law = fit_power_law([1, 10, 100], [2, 20, 200])
    assert law.exponent == pytest.approx(1.0) and law.stderr == pytest.approx(0, abs=1e-9)


def test_two_points_fit_without_an_interval_and_one_point_is_refused():
    assert math.isinf(fit_power_law([1, 10], [1, 5]).ci[1])
    with pytest.raises(PicochatError, match="at least 2 points"):
        fit_power_law([1], [1])


def batch_sweep(exponent: float = 0.383, noise: float = 0.0, seed: int = 0) -> list[dict]:
    """Per horizon D, batches around B_opt = 64 D^exponent; loss is a parabola in log B."""
    rng = np.random.default_rng(seed)
    rows = []
    for depth, tokens in zip((2, 3, 4, 6, 8, 10), np.geomspace(1e7, 1e10, 6)):
        best = 64 * tokens ** exponent * math.exp(rng.normal(0, noise))
        for factor in (0.25, 0.5, 1.0, 2.0, 4.0):
            rows.append(row({"depth": depth, "total_batch_size": int(best * factor)}, {},
                            1.0 + math.log(factor) ** 2, tokens=tokens))
    return rows


def test_batch_law_from_the_sweep_optima():
    fit = fit_batch(batch_sweep(noise=0.05))
    assert len(fit.x) == 6
    assert abs(fit.law.exponent - 0.383) < 0.03 and fit.law.ci[0] < 0.383 < fit.law.ci[1]


def test_weight_decay_law_recovers_inverse_square_width():
    rows = []
    for depth in (4, 8, 12, 16, 20):
        width = width_of({"depth": depth})
        best = 0.2 * (768 / width) ** 2
        for factor in (0.5, 1.0, 2.0):
            rows.append(row({"depth": depth, "weight_decay": best * factor}, {}, 1.0 + abs(math.log(factor))))
    fit = fit_weight_decay(rows)
    assert fit.law.exponent == pytest.approx(-2.0, abs=1e-6)
    assert fitted_constants([fit])["wd_ref"] == pytest.approx(0.2)


def test_a_group_with_one_knob_value_is_no_optimum():
    rows = [row({"depth": 2, "weight_decay": 0.1}, {}, 1.0), row({"depth": 3, "weight_decay": 0.1}, {}, 1.0)]
    assert optima(rows, "weight_decay") == []
    assert "skipped" in fit_weight_decay(rows).note


def test_loss_law_uses_the_compute_frontier():
    flops = np.geomspace(1e15, 1e19, 8)
    rows = [row({"n": i}, {}, 5.0 * f ** -0.05, flops=f) for i, f in enumerate(flops)]
    rows.append(row({"n": "bad"}, {}, 9.0, flops=1e18))  # off the frontier: a worse, costlier run
    assert len(compute_frontier(rows)) == 8
    assert fit_loss(rows).law.exponent == pytest.approx(-0.05, abs=1e-6)


def test_scaling_params_follow_from_logged_flops():
    cfg = GPTConfig(depth=4, vocab_size=1000, max_seq_len=256)
    tokens = 1e6
    r = row({"depth": 4}, {"max_seq_len": 256}, 1.0, tokens=tokens, flops=flops_per_token(cfg) * tokens)
    assert scaling_params_of(r) == pytest.approx(scaling_params(cfg))


def test_ratio_is_that_of_the_best_depth_at_each_compute_budget():
    rows = []
    for budget in (1e15, 1e16, 1e17):
        for depth in (2, 4, 6):
            cfg = GPTConfig(depth=depth, vocab_size=1000, max_seq_len=256)
            tokens = budget / flops_per_token(cfg)
            ratio = tokens / scaling_params(cfg)
            rows.append(row({"depth": depth, "budget": budget}, {"max_seq_len": 256},
                            1.0 + abs(math.log(ratio / 10.5)), tokens=tokens, flops=budget))
    fit = fit_ratio(rows)
    best = [min((r for r in rows if r["summary"]["flops"] == b), key=lambda r: r["summary"]["val_bpb"])
            for b in (1e15, 1e16, 1e17)]
    expected = [r["summary"]["tokens"] / scaling_params(GPTConfig(depth=r["config"]["depth"], vocab_size=1000,
                                                                   max_seq_len=256)) for r in best]
    assert fit.y == pytest.approx(expected)
    assert fitted_constants([fit])["ratio"] == pytest.approx(math.exp(np.mean(np.log(expected))))


ISO_DEPTHS = (2, 3, 4, 5, 6, 8)


def isoflop_sweep(optimal_params, budgets=(1e15, 1e16, 1e17), depths=ISO_DEPTHS) -> list[dict]:
    """Every depth trained to each budget; bpb a parabola in ln N with its bottom at optimal_params(F)."""
    rows = []
    for budget in budgets:
        for depth in depths:
            cfg = GPTConfig(depth=depth, vocab_size=1000, max_seq_len=256)
            tokens = budget / flops_per_token(cfg)
            bpb = 1.0 + 0.05 * math.log(scaling_params(cfg) / optimal_params(budget)) ** 2
            rows.append(row({"target_flops": budget, "depth": depth}, {"max_seq_len": 256}, bpb,
                            tokens=tokens, flops=budget))
    return rows


def test_isoflop_parabolas_find_the_known_optimum_and_its_power_law():
    def optimal(budget):
        return 1e6 * (budget / 1e15) ** 0.5  # N_opt ∝ C^0.5, inside the depths' sizes at every budget
    rows = isoflop_sweep(optimal)
    found, notes = isoflop_optima(rows)
    assert notes == [] and [o.budget for o in found] == [1e15, 1e16, 1e17]
    sizes = [scaling_params(GPTConfig(depth=d, vocab_size=1000, max_seq_len=256)) for d in ISO_DEPTHS]
    for o in found:
        assert o.params == pytest.approx(optimal(o.budget), rel=1e-6)
        assert o.bpb == pytest.approx(1.0, abs=1e-9)
        below = max(i for i, n in enumerate(sizes) if n <= o.params)  # the depths either side of the optimum
        assert ISO_DEPTHS[below] <= o.depth <= ISO_DEPTHS[below + 1]
        tokens_either_side = [o.budget / flops_per_token(GPTConfig(depth=ISO_DEPTHS[i], vocab_size=1000,
                                                                   max_seq_len=256)) for i in (below + 1, below)]
        assert tokens_either_side[0] <= o.tokens <= tokens_either_side[1]
    params_law, tokens_law = fit_isoflop(rows)
    assert params_law.law.exponent == pytest.approx(0.5, abs=1e-6)
    assert params_law.law.coefficient == pytest.approx(1e6 / 1e15 ** 0.5, rel=1e-4)
    assert abs(tokens_law.law.exponent - 0.5) < 0.05  # D = C / FLOPs-per-token, about C / 6N
    assert fitted_constants([params_law, tokens_law])["ratio"] == pytest.approx(
        math.exp(np.mean([math.log(o.ratio) for o in found])))


def test_isoflop_budgets_without_an_inside_minimum_are_named_not_fitted():
    rows = isoflop_sweep(lambda budget: 1e6 if budget < 1e16 else 1e9, budgets=(1e15, 1e17))  # 1e9: past d8
    rows += isoflop_sweep(lambda budget: 1e6, budgets=(1e16,), depths=(2, 4))
    found, notes = isoflop_optima(rows)
    assert [o.budget for o in found] == [1e15]
    assert any("beyond the largest depth" in n and "1e+17" in n for n in notes)
    assert any("a parabola needs 3+" in n and "1e+16" in n for n in notes)
    assert all(f.law is None and "skipped" in f.note for f in fit_isoflop(rows))


def test_written_constants_are_read_by_plan(tmp_path):
    constants = fitted_constants([fit_batch(batch_sweep())], reference_tokens=1e9)
    path = write_constants(constants, tmp_path / "c.json")
    loaded = load_constants(path)
    assert loaded.batch_exponent == pytest.approx(0.383, abs=1e-4)  # batches are whole tokens
    assert loaded.reference_batch_tokens == 2 ** round(math.log2(64 * 1e9 ** 0.383))
    with pytest.raises(PicochatError, match="nothing written"):
        write_constants({}, tmp_path / "none.json")


@pytest.mark.slow
def test_fit_command_writes_plots_fits_and_constants(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    sweep = tmp_path / "sweeps" / "bs"
    sweep.mkdir(parents=True)
    (sweep / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in batch_sweep(noise=0.02)))
    assert main(["fit", "bs", "--write-constants", str(tmp_path / "fitted.json")]) == 0
    out = capsys.readouterr().out
    assert "batch_vs_tokens" in out and "weight_decay_vs_width: skipped" in out
    assert (sweep / "fits" / "batch_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"
    assert "batch_exponent" in json.loads((tmp_path / "fitted.json").read_text())
    assert main(["plan", "--depth", "8", "--constants", str(tmp_path / "fitted.json")]) == 0


@pytest.mark.slow
def test_fit_command_reports_each_budgets_optimal_depth(home, capsys):
    sweep = home / "sweeps" / "iso"
    sweep.mkdir(parents=True)
    rows = isoflop_sweep(lambda budget: 1e6 * (budget / 1e15) ** 0.5)
    (sweep / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["fit", "iso", "--write-constants", str(home / "fitted.json")]) == 0
    out = capsys.readouterr().out
    assert "optimal_params_vs_compute: compute-optimal scaling params = " in out
    assert out.count("isoFLOP ") == 3 and "isoFLOP 1e+16 FLOPs: optimal depth ≈ " in out
    saved = json.loads((sweep / "fits" / "fits.json").read_text())
    assert [o["budget"] for o in saved["isoflop"]] == [1e15, 1e16, 1e17]
    assert json.loads((home / "fitted.json").read_text())["ratio"] == pytest.approx(
        math.exp(np.mean([math.log(o["ratio"]) for o in saved["isoflop"]])))
