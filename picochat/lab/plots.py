"""PNG plots with matplotlib's Agg backend (no display needed); every axis is labelled."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from picochat.errors import PicochatError


def pyplot():
    """matplotlib.pyplot on the Agg backend; matplotlib is the optional `lab` extra."""
    try:
        import matplotlib  # noqa: PLC0415  (optional dependency, imported only when plotting)
    except ImportError:
        raise PicochatError("plots need matplotlib: pip install 'picochat[lab]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def line_plot(series: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str,
              path: Path, log_x: bool = False, markers: bool = True) -> Path:
    """One line per label; `series` maps label -> (x, y)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o" if markers else None, markersize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def power_law_plot(x: np.ndarray, y: np.ndarray, coefficient: float, exponent: float, xlabel: str, ylabel: str,
                   title: str, path: Path, points_label: str = "sweep optima") -> Path:
    """Measured points and the fitted y = coefficient * x^exponent on log-log axes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(x, y, label=points_label, zorder=3)
    xs = np.geomspace(min(x), max(x), 100)
    ax.plot(xs, coefficient * xs ** exponent, label=f"fit: {coefficient:.3g} x^{exponent:.3f}", color="C1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def bar_plot(values: dict[str, float], ylabel: str, title: str, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.bar(list(values), list(values.values()), color="C0")
    ax.set_xlabel("run")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
