"""The pipeline's pictures: drawn from the stage's own data, deterministic, and not blank."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dogs_vs_cats import figures
from dogs_vs_cats.common import write_csv


def _ink(path) -> float:
    """The share of pixels that are not near-white: axes, curves and labels."""
    return float((np.asarray(Image.open(path).convert("L")) < 200).mean())


def test_training_curves_draw_both_logs_the_same_way_every_time(tmp_path):
    rows = [[e, 0.5 + e / 40, 0.7 - e / 40, 0.69 - e / 40, 0.001, 1.0] for e in range(1, 11)]
    write_csv(tmp_path / "train_log.csv", ["epoch", "accuracy", "loss", "log_loss", "learning_rate", "train_s"], rows)
    write_csv(tmp_path / "val_log.csv", ["epoch", "val_accuracy", "val_loss", "val_log_loss"], [[5, 0.6, 0.6, 0.6]])
    for name in ("a.png", "b.png"):
        figures.training_curves(tmp_path / "train_log.csv", tmp_path / "val_log.csv", tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # DVC sees no change on a rerun
    image = Image.open(tmp_path / "a.png")
    assert image.format == "PNG" and image.width == figures.WIDTH_IN * figures.DPI
    assert _ink(tmp_path / "a.png") > 0.01


def test_confusion_matrix_and_roc_curve_are_drawn_from_the_holdout_answers(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    p = np.clip(y * 0.6 + rng.uniform(0, 0.4, 100), 0, 1)
    figures.confusion_matrix(y, p, tmp_path / "confusion.png")
    figures.roc_curve(np.linspace(0, 1, 20), np.sqrt(np.linspace(0, 1, 20)), 0.9, tmp_path / "roc.png")
    figures.roc_curve(np.zeros(0), np.zeros(0), None, tmp_path / "empty_roc.png")  # a one-class holdout
    for name in ("confusion.png", "roc.png", "empty_roc.png"):
        assert Image.open(tmp_path / name).format == "PNG" and _ink(tmp_path / name) > 0.005, name
    assert _ink(tmp_path / "roc.png") > _ink(tmp_path / "empty_roc.png")  # the curve itself is drawn
