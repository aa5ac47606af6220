"""The pipeline's pictures: the training curves (the original demo's figure), the holdout
confusion matrix and ROC curve, as PNG files that DVC versions and the README shows.

`dvc plots show` draws the same data interactively from the CSV files; these images are what
a reader sees without running anything. matplotlib's Agg backend draws them without a display,
and the files carry no date or version, so the same figures give the same bytes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .common import atomic_path

WIDTH_IN, DPI = 9.0, 100  # 900 px wide: legible on a README page


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    _plt().close(fig)


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def training_curves(train_log: Path, val_log: Path, out: Path) -> None:
    """Accuracy and log loss per epoch, training (augmented) against validation."""
    train = list(csv.DictReader(open(train_log, newline="")))
    val = list(csv.DictReader(open(val_log, newline="")))
    plt = _plt()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(WIDTH_IN, 3.4), layout="constrained")
    epochs, val_epochs = _column(train, "epoch"), _column(val, "epoch") if val else np.zeros(0)
    for ax, key, title in ((acc, "accuracy", "Accuracy"), (loss, "log_loss", "Log loss")):
        ax.plot(epochs, _column(train, key), label="training (augmented)", color="tab:blue")
        if val:
            ax.plot(val_epochs, _column(val, f"val_{key}"), "o-", ms=3, label="validation", color="tab:orange")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    acc.legend(loc="lower right")
    _save(fig, out)


def confusion_matrix(y: np.ndarray, p: np.ndarray, out: Path) -> None:
    """Counts of actual against predicted class at P(dog) = 0.5."""
    predicted = (p >= 0.5).astype(int)
    counts = np.array([[np.sum((y == a) & (predicted == b)) for b in (0, 1)] for a in (0, 1)])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.6), layout="constrained")
    ax.imshow(counts, cmap="Blues", vmin=0)
    for a in (0, 1):
        for b in (0, 1):
            dark = counts[a, b] > counts.max() / 2
            ax.text(b, a, f"{counts[a, b]:,}", ha="center", va="center", color="white" if dark else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["cat", "dog"], yticklabels=["cat", "dog"])
    ax.set(xlabel="predicted", ylabel="actual", title=f"Holdout: {len(y):,} photos")
    _save(fig, out)


def roc_curve(fpr: np.ndarray, tpr: np.ndarray, auc: float | None, out: Path) -> None:
    """True against false positive rate (dog = positive), with the area under the curve."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.6), layout="constrained")
    ax.plot(fpr, tpr, color="tab:blue", label=f"AUC {auc:.3f}" if auc is not None else None)
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="Holdout ROC curve", xlim=(0, 1), ylim=(0, 1)
    )
    if auc is not None:
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, out)
