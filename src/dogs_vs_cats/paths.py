"""Every path a stage reads or writes, relative to the project root, as `dvc.yaml` names them.

The one place they are spelled in Python: stages import from here, never from each
other, and `tests/test_layout.py` checks that `dvc.yaml` says the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Stage outputs, in pipeline order.
RAW = Path("data/raw")  # download: train.zip, test.zip, sample_submission.csv
SPLIT = Path("data/split")  # split: train.csv, val.csv, holdout.csv
PREPARED = Path("data/prepared")  # prepare: one TFRecord file per set
TEACHER_DIR = Path("data/teacher")  # train: the model learnt from the labelled photos alone
TEACHER = TEACHER_DIR / "model.keras"
MODEL_DIR = Path("data/model")  # student: the model evaluate, submission and export read (the teacher's when off)
MODEL = MODEL_DIR / "model.keras"
SUBMISSION = Path("data/submission.csv")  # submission
EXPORT = Path("data/export")  # export: model_<form>.tflite

# Metrics and plot data, versioned in git beside the code.
PREPARE_REPORT = Path("metrics/prepare.json")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_LOG = Path("metrics/train_log.csv")  # every epoch
VAL_LOG = Path("metrics/val_log.csv")  # the validated epochs only
TRAIN_CURVES = Path("metrics/training_curves.png")  # both logs drawn by evaluate: the original demo's figure
UNLABELLED_METRICS = Path("metrics/unlabelled.json")  # how many test photos the student learns from (0: off)
STUDENT_METRICS = Path("metrics/student.json")
STUDENT_LOG = Path("metrics/student_log.csv")
STUDENT_VAL_LOG = Path("metrics/student_val_log.csv")
EVAL_METRICS = Path("metrics/eval.json")
EVAL_PLOTS = Path("metrics/plots")  # confusion, ROC and precision-recall as CSV; confusion.png and roc.png
# The integer forms' size and holdout scores, one file each: what `dvc metrics` compares, a row per form.
FORM_METRICS = {"int8": Path("metrics/int8.json"), "int4": Path("metrics/int4.json")}
EXPORT_REPORT = Path("metrics/export_forms.json")  # every form: size, scores and latency (changes every run)

# Working folders outside DVC's outputs, so DVC does not delete them before a re-run.
DOWNLOAD_STAGING = Path("data/.download")  # partial downloads the kaggle client resumes
TRAIN_STATE = Path("data/train_state")  # per-epoch checkpoints a killed run resumes from
STUDENT_STATE = Path("data/student_state")

SETS = ("train", "val", "holdout")  # the labelled sets split writes and prepare stores


def prepared(key: str) -> Path:
    """The prepared store of one set: train, val, holdout or test."""
    return PREPARED / f"{key}.tfrecord"


@dataclass(frozen=True, kw_only=True)
class Run:
    """What one training run writes, and its labelled photos: the teacher's (train) or the student's."""

    stage: str
    source: Path  # the training images
    model: Path
    metrics: Path
    log: Path  # every epoch
    val_log: Path  # the validated epochs
    state: Path  # checkpoints a killed run resumes from


TEACHER_RUN = Run(
    stage="train",
    source=prepared("train"),
    model=TEACHER,
    metrics=TRAIN_METRICS,
    log=TRAIN_LOG,
    val_log=VAL_LOG,
    state=TRAIN_STATE,
)
STUDENT_RUN = Run(
    stage="student",
    source=prepared("train"),  # the labelled photos; the test photos come through its learner (consistency.py)
    model=MODEL,
    metrics=STUDENT_METRICS,
    log=STUDENT_LOG,
    val_log=STUDENT_VAL_LOG,
    state=STUDENT_STATE,
)
