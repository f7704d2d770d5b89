"""How sure is a difference between two arms of seeds? Welch's t-test and a seed-count estimate, pure.

numpy is the only numeric dependency, so the Student-t distribution is computed here from the
regularized incomplete beta function (its continued fraction, evaluated by Lentz's method:
Press et al., Numerical Recipes, §6.4; DLMF 8.17.22).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95  # the CI's coverage; a two-sided p below 1 − CONFIDENCE is called significant
# Standard normal quantiles for the seed-count estimate: z(0.975) (two-sided α = 0.05) and z(0.8) (power 0.8).
Z_ALPHA, Z_POWER = 1.959964, 0.841621
POWER = 0.8


def _beta_continued_fraction(a: float, b: float, x: float, max_terms: int = 300, eps: float = 3e-16) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, max_terms + 1):
        # the even then the odd term of the fraction (DLMF 8.17.22)
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return fraction


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):  # the fraction converges fast on this side; use the symmetry on the other
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with `df` degrees of freedom: the tail is ½·I_{df/(df+t²)}(df/2, ½)."""
    tail = 0.5 * regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T ≤ t) = p, by bisection on the CDF (monotone; 200 halvings reach float precision)."""
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if student_t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass
class Significance:
    difference: float  # mean(candidate) − mean(baseline)
    low: float  # the CONFIDENCE interval of the difference
    high: float
    p_value: float  # two-sided
    df: float
    seeds: tuple[int, int]  # (baseline, candidate)

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - CONFIDENCE


def welch_t_test(baseline: list[float], candidate: list[float]) -> Significance:
    """Welch's unequal-variance t-test of candidate − baseline; each arm needs ≥ 2 values."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t needs at least 2 values per arm, got {len(a)} and {len(b)}")
    difference = float(b.mean() - a.mean())
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    standard_error = math.sqrt(float(var_a + var_b))
    if standard_error == 0.0:  # every repeat identical: the difference is exact
        return Significance(difference, difference, difference, 1.0 if difference == 0 else 0.0,
                            math.inf, (len(a), len(b)))
    # Welch–Satterthwaite degrees of freedom
    df = float((var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1)))
    t = difference / standard_error
    p_value = 2 * (1 - student_t_cdf(abs(t), df))
    margin = student_t_quantile(1 - (1 - CONFIDENCE) / 2, df) * standard_error
    return Significance(difference, difference - margin, difference + margin, p_value, df, (len(a), len(b)))


def seeds_needed(difference: float, noise_sd: float) -> int | None:
    """Seeds per arm for a two-sided test at α = 1 − CONFIDENCE to detect `difference` with POWER,
    n = 2·(z_α/2 + z_power)²·σ²/δ² (normal approximation, the same seed-to-seed σ in both arms).
    None when there is no difference to detect or no noise estimate."""
    if difference == 0 or not noise_sd > 0:
        return None
    return max(2, math.ceil(2 * (Z_ALPHA + Z_POWER) ** 2 * noise_sd ** 2 / difference ** 2))


def pooled_sd(arms: list[list[float]]) -> float | None:
    """The seed-to-seed standard deviation pooled over the arms that have repeats (None without any)."""
    repeated = [np.asarray(arm, dtype=float) for arm in arms if len(arm) >= 2]
    if not repeated:
        return None
    squares = sum(float(((arm - arm.mean()) ** 2).sum()) for arm in repeated)
    return math.sqrt(squares / sum(len(arm) - 1 for arm in repeated))


def end_of_curve_jitter(bpb: list[float], points: int = 5) -> float | None:
    """The scatter of a run's last `points` evaluations about their straight-line fit: a stand-in
    for seed noise when no arm has repeats (a lower bound: a seed also moves the whole curve)."""
    y = np.asarray(bpb[-points:], dtype=float)
    if len(y) < 3:
        return None
    x = np.arange(len(y), dtype=float)
    residuals = y - np.polyval(np.polyfit(x, y, 1), x)
    return float(math.sqrt((residuals ** 2).sum() / (len(y) - 2)))
