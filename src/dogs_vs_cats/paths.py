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
MEMBERS = Path("data/members")  # train@SEED, student@SEED: one folder per ensemble member (member())
MODEL_DIR = Path("data/model")  # ensemble: the model evaluate and submission read
MODEL = MODEL_DIR / "model.keras"  # the members combined (with one member, its model as it is)
EDGE_DIR = Path("data/edge")  # edge: the one net export ships
EDGE_MODEL = EDGE_DIR / "model.keras"  # the member with the lowest validation log loss, or distilled from the ensemble
SUBMISSION = Path("data/submission.csv")  # submission
EXPORT = Path("data/export")  # export: model_<form>.tflite

# Metrics and plot data, versioned in git beside the code.
PREPARE_REPORT = Path("metrics/prepare.json")
MEMBER_METRICS = Path("metrics/members")  # each member's logs and reports, a folder per seed (member())
ENSEMBLE_METRICS = Path("metrics/ensemble.json")  # the members, their validation scores, the combined temperature
EDGE_METRICS = Path("metrics/edge.json")  # which net export ships, and how it was made
TRAIN_CURVES = Path("metrics/training_curves.png")  # the first member's logs drawn by evaluate: the demo's figure
EVAL_METRICS = Path("metrics/eval.json")
EVAL_PLOTS = Path("metrics/plots")  # confusion, ROC and precision-recall as CSV; confusion.png and roc.png
# The integer forms' size and holdout scores, one file each: what `dvc metrics` compares, a row per form.
FORM_METRICS = {"int8": Path("metrics/int8.json"), "int4": Path("metrics/int4.json")}
EXPORT_REPORT = Path("metrics/export_forms.json")  # every form: size, scores and latency (changes every run)

# Working folders outside DVC's outputs, so DVC does not delete them before a re-run.
DOWNLOAD_STAGING = Path("data/.download")  # partial downloads the kaggle client resumes
TRAIN_STATE = Path("data/train_state")  # per-epoch checkpoints a killed run resumes from, a folder per seed
STUDENT_STATE = Path("data/student_state")
EDGE_STATE = Path("data/edge_state")

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


@dataclass(frozen=True)
class Member:
    """Where one ensemble member, named by its training seed, keeps its teacher, its model and its reports."""

    seed: int

    @property
    def teacher(self) -> Path:  # train@SEED: learnt from the labelled photos alone
        return MEMBERS / str(self.seed) / "teacher" / "model.keras"

    @property
    def model(self) -> Path:  # student@SEED: the teacher, or the teacher trained on the test photos too
        return MEMBERS / str(self.seed) / "model" / "model.keras"

    @property
    def reports(self) -> Path:
        return MEMBER_METRICS / str(self.seed)

    @property
    def unlabelled(self) -> Path:  # how many test photos its student learns from (0: off)
        return self.reports / "unlabelled.json"

    @property
    def teacher_run(self) -> Run:
        r = self.reports
        return Run(
            stage=f"train@{self.seed}",
            source=prepared("train"),
            model=self.teacher,
            metrics=r / "train.json",
            log=r / "train_log.csv",
            val_log=r / "val_log.csv",
            state=TRAIN_STATE / str(self.seed),
        )

    @property
    def student_run(self) -> Run:
        r = self.reports
        return Run(
            stage=f"student@{self.seed}",
            source=prepared("train"),  # the labelled photos; the test photos come through its learner (consistency.py)
            model=self.model,
            metrics=r / "student.json",
            log=r / "student_log.csv",
            val_log=r / "student_val_log.csv",
            state=STUDENT_STATE / str(self.seed),
        )


EDGE_RUN = Run(
    stage="edge",
    source=prepared("train"),  # the labelled photos; the test photos come through its learner (distillation.py)
    model=EDGE_MODEL,
    metrics=EDGE_METRICS,
    log=Path("metrics/edge_log.csv"),
    val_log=Path("metrics/edge_val_log.csv"),
    state=EDGE_STATE,
)
