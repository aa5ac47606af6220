"""Every path a stage reads or writes, relative to the project root, as `dvc.yaml` names them.

The one place they are spelled in Python: stages import from here, never from each
other, and `tests/test_pipeline.py` checks that `dvc.yaml` says the same.
"""

from __future__ import annotations

from pathlib import Path

# Stage outputs, in pipeline order.
RAW = Path("data/raw")  # download: train.zip, test.zip, sample_submission.csv
SPLIT = Path("data/split")  # split: train.csv, val.csv, holdout.csv
PREPARED = Path("data/prepared")  # prepare: one TFRecord file per set
MODEL_DIR = Path("data/model")  # train
MODEL = MODEL_DIR / "model.keras"
SUBMISSION = Path("data/submission.csv")  # submission
EXPORT = Path("data/export")  # export: model_<form>.tflite

# Metrics and plot data, versioned in git beside the code.
PREPARE_REPORT = Path("metrics/prepare.json")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_LOG = Path("metrics/train_log.csv")  # every epoch
VAL_LOG = Path("metrics/val_log.csv")  # the validated epochs only
TRAIN_CURVES = Path("metrics/training_curves.png")  # both logs drawn: the original demo's figure
EVAL_METRICS = Path("metrics/eval.json")
EVAL_PLOTS = Path("metrics/plots")  # confusion, ROC and precision-recall as CSV; confusion.png and roc.png
# The integer forms' size and holdout scores, one file each: what `dvc metrics` compares, a row per form.
FORM_METRICS = {"int8": Path("metrics/int8.json"), "int4": Path("metrics/int4.json")}
EXPORT_REPORT = Path("metrics/export_forms.json")  # every form: size, scores and latency (changes every run)

# Working folders outside DVC's outputs, so DVC does not delete them before a re-run.
DOWNLOAD_STAGING = Path("data/.download")  # partial downloads the kaggle client resumes
TRAIN_STATE = Path("data/train_state")  # per-epoch checkpoints a killed run resumes from

SETS = ("train", "val", "holdout")  # the labelled sets split writes and prepare stores


def prepared(key: str) -> Path:
    """The prepared store of one set: train, val, holdout or test."""
    return PREPARED / f"{key}.tfrecord"
