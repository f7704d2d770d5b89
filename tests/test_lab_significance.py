"""Significance: the Student-t distribution against table values, Welch's t, seed counts, and `compare` on seeds."""
from __future__ import annotations

import math

import numpy as np
import pytest

from picochat.lab.report import compare_runs
from picochat.lab.runs import load_run
from picochat.lab.significance import (
    end_of_curve_jitter, pooled_sd, regularized_incomplete_beta, seeds_needed, student_t_cdf, student_t_quantile,
    welch_t_test,
)
from test_lab_runs import make_run


def test_incomplete_beta_matches_closed_forms():
    # I_x(2, 3) is a binomial tail: P(Bin(4, x) ≥ 2); I_x(½, ½) = (2/π)·asin(√x)
    assert regularized_incomplete_beta(2, 3, 0.4) == pytest.approx(6 * 0.4**2 * 0.6**2 + 4 * 0.4**3 * 0.6 + 0.4**4, rel=1e-12)
    for x in (0.05, 0.3, 0.9):
        assert regularized_incomplete_beta(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), rel=1e-12)
    assert regularized_incomplete_beta(3, 4, 0.0) == 0.0 and regularized_incomplete_beta(3, 4, 1.0) == 1.0


def test_student_t_cdf_matches_closed_forms():
    # df 1 is Cauchy: ½ + atan(t)/π; df 2: ½ + t / (2·√(2 + t²))
    for t in (-3.0, -0.5, 0.0, 1.0, 7.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("df,t975", [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042), (1e6, 1.960)])
def test_student_t_quantile_matches_the_table(df, t975):
    assert student_t_quantile(0.975, df) == pytest.approx(t975, abs=6e-4)
    assert student_t_cdf(t975, df) == pytest.approx(0.975, abs=2e-4)
    assert student_t_quantile(0.025, df) == pytest.approx(-t975, abs=6e-4)


def test_welch_t_test_by_hand():
    # means 2 and 3.1667, variances 1 and 1.5833 over 3: se² = 0.86111, df = 3.806 (Welch–Satterthwaite)
    result = welch_t_test([1.0, 2.0, 3.0], [2.0, 3.0, 4.5])
    assert result.difference == pytest.approx(7 / 6)
    se = math.sqrt(1 / 3 + 1.58333333 / 3)
    assert result.df == pytest.approx(0.86111111**2 / ((1 / 3) ** 2 / 2 + (1.58333333 / 3) ** 2 / 2), rel=1e-6)
    assert result.p_value == pytest.approx(2 * (1 - student_t_cdf((7 / 6) / se, result.df)))
    assert result.p_value == pytest.approx(0.28029, abs=1e-4)
    margin = student_t_quantile(0.975, result.df) * se
    assert (result.low, result.high) == pytest.approx((7 / 6 - margin, 7 / 6 + margin))
    assert not result.significant and welch_t_test([1.0, 1.1, 0.9], [3.0, 3.1, 2.9]).significant


def test_welch_needs_two_values_per_arm():
    with pytest.raises(ValueError, match="at least 2"):
        welch_t_test([1.0], [1.0, 2.0])


def test_seeds_needed_is_the_normal_power_formula():
    # n = 2·(1.96 + 0.8416)²·σ²/δ² = 15.7·(σ/δ)²: σ = δ needs 16 seeds, σ = δ/2 needs 4
    assert seeds_needed(-0.01, 0.01) == 16
    assert seeds_needed(0.02, 0.01) == 4
    assert seeds_needed(0.1, 0.001) == 2  # never fewer than a test needs
    assert seeds_needed(0.0, 0.01) is None and seeds_needed(0.01, 0.0) is None


def test_pooled_sd_and_end_of_curve_jitter():
    assert pooled_sd([[1.0, 3.0], [5.0], [2.0, 2.0, 5.0]]) == pytest.approx(math.sqrt((2 + 6) / 3))
    assert pooled_sd([[1.0], [2.0]]) is None
    assert end_of_curve_jitter([5.0, 4.0, 3.0, 2.0, 1.0]) == pytest.approx(0.0, abs=1e-12)  # a straight line
    tail = np.array([1.0, 1.1, 0.9, 1.1, 0.9])  # only the last 5 count: the 9.0 is left out
    design = np.stack([np.ones(5), np.arange(5.0)], axis=1)
    _, rss, *_ = np.linalg.lstsq(design, tail, rcond=None)
    assert end_of_curve_jitter([9.0, *tail]) == pytest.approx(math.sqrt(rss[0] / 3), rel=1e-9)


# -- compare on seeded synthetic curves --------------------------------------------------------

def seeded_arms(offset: float, seeds: int, noise: float = 0.004, jitter: float = 0.001,
                arms_seed: int = 0) -> list[str]:
    """Two arms of `seeds` runs each: the candidate sits `offset` bpb from the baseline; each run
    adds its own seeded level shift (sd `noise`) and evaluation jitter (sd `jitter`)."""
    rng = np.random.default_rng(arms_seed)
    names = []
    for arm, shift, config in (("base", 0.0, {}), ("cand", offset, {"weight_decay": 0.3})):
        for seed in range(seeds):
            level = shift + rng.normal(0, noise)
            wiggle = rng.normal(0, jitter, size=11)
            names.append(make_run(f"{arm}{seed}", bpb_at=lambda s, lv=level, j=wiggle: 2.0 - 0.05 * s + lv + j[s],
                                  config={**config, "seed": seed}).name)
    return names


def test_compare_recovers_a_known_difference_with_its_interval_and_p_value(home):
    names = seeded_arms(offset=-0.02, seeds=4)
    result = compare_runs([load_run(n) for n in names], home / "out", plots=False)
    verdict = result["verdicts"][0]
    for axis in ("step", "flops", "time"):
        test = verdict["significance"][axis]
        assert test["seeds"] == (4, 4)
        assert test["low"] < -0.02 < test["high"] and test["high"] < 0
        assert test["p_value"] < 0.01
        assert verdict["axes"][axis].startswith(("per step: better", "per FLOP: better", "per second: better"))
    assert abs(verdict["differences"]["step"] + 0.02) < 0.01
    assert verdict["gain"] is True


def test_compare_calls_equal_arms_indistinguishable_from_noise(home):
    names = seeded_arms(offset=0.0, seeds=3, arms_seed=1)
    result = compare_runs([load_run(n) for n in names], home / "out", plots=False)
    verdict = result["verdicts"][0]
    assert verdict["significance"]["step"]["p_value"] > 0.05
    assert "not distinguishable from noise" in verdict["axes"]["step"]
    assert verdict["summary"] == "no difference beyond the noise on any axis"


def test_one_seed_per_arm_says_how_many_seeds_it_would_take(home):
    names = seeded_arms(offset=-0.02, seeds=1, noise=0.002, jitter=0.01, arms_seed=2)
    verdict = compare_runs([load_run(n) for n in names], home / "out", plots=False)["verdicts"][0]
    assert verdict["significance"]["step"] is None
    text = verdict["axes"]["step"]
    assert "fewer than 2 seeds per arm, so no p-value" in text and "jitter of the last evaluations" in text
    difference = verdict["differences"]["step"]
    jitters = [end_of_curve_jitter([r["val_bpb"] for r in load_run(n).evals()]) for n in names]
    needed = seeds_needed(difference, max(jitters))
    assert needed > 2 and f"≈{needed} seeds per arm" in text


def test_repeats_in_one_arm_give_the_pooled_noise_for_the_seed_count(home):
    make_run("a1", bpb_at=lambda s: 2.0 - 0.04 * s, config={"seed": 1})
    make_run("a2", bpb_at=lambda s: 2.02 - 0.04 * s, config={"seed": 2})
    make_run("b", bpb_at=lambda s: 1.99 - 0.04 * s, config={"weight_decay": 0.3})
    verdict = compare_runs([load_run(n) for n in ("a1", "a2", "b")], home / "out", plots=False)["verdicts"][0]
    # σ pooled over a1, a2 = 0.02/√2; the difference is 0.02 → n = 15.7·½ → 8
    assert "pooled over the repeats" in verdict["axes"]["step"]
    assert "≈8 seeds per arm" in verdict["axes"]["step"]
