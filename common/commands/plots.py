"""Learning curves as PNG, drawn once for the train scripts and for compare."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.core.files import atomic_path  # noqa: E402


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
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


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
