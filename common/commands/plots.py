"""Learning curves as PNG, drawn once for the train scripts and for compare."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.core.files import atomic_path  # noqa: E402


def _save(fig, path: str | Path, ax=None, title: str = "") -> Path:
    """Finish a figure (a one-plot figure gets its grid, legend and title here) and write it
    atomically as a PNG; the figure is closed."""
    if ax is not None:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        if title:
            ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def plot_curves(histories: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """d2l's picture: train loss, train acc and test acc per epoch, one colour per run."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for (label, rows), color in zip(histories.items(), ("C0", "C1", "C2", "C3", "C4")):
        epochs = [r["epoch"] for r in rows]
        for ax, key in zip(axes, ("train_loss", "train_acc", "test_acc")):
            ax.plot(epochs, [r[key] for r in rows], marker="o", color=color, label=label)
    for ax, key in zip(axes, ("train loss", "train acc", "test acc")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_sweep(series: dict[str, list[tuple[int, float]]], path: str | Path,
               title: str = "") -> Path:
    """resnet-bench --batch-sizes: images per second against the batch size (log scale), one
    line per framework and phase."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in series.items():
        points = sorted(points)
        ax.plot([b for b, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images per second")
    return _save(fig, path, ax, title)


def seed_band(histories: list[list[dict]], key: str = "test_acc"):
    """Per epoch (those every run reached): the mean, min and max of `key` over the runs."""
    epochs = sorted(set.intersection(*({r["epoch"] for r in h if r.get(key) is not None}
                                       for h in histories))) if histories else []
    values = [[next(r[key] for r in h if r["epoch"] == e) for h in histories] for e in epochs]
    return (epochs, [sum(v) / len(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])


def plot_seed_bands(runs: dict[str, list[list[dict]]], path: str | Path, title: str = "") -> Path:
    """compare --seeds: test accuracy per epoch, one colour per framework, the line the mean
    over the seeds and the band their min to max."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (label, histories), color in zip(runs.items(), ("C0", "C1", "C2", "C3", "C4")):
        epochs, mean, lo, hi = seed_band(histories)
        ax.plot(epochs, mean, marker="o", color=color, label=f"{label} ({len(histories)} seeds)")
        ax.fill_between(epochs, lo, hi, color=color, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path, ax, title)
