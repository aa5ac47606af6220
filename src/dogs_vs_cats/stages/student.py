"""Stage `student`: the model that `evaluate`, `submission` and `export` read (data/model).

With `unlabelled` off it is the teacher itself, copied. With it on, a new SqueezeNet is
trained from scratch, by the teacher's recipe (trainer.py) over `unlabelled.epochs`, on the
labelled photos and the test photos `pseudolabel` labelled: a noisy student, since its
augmentation and dropout see each pseudo-labelled photo in ways the teacher never did.
"""

from __future__ import annotations

import csv
import shutil

from ..callbacks import write_logs
from ..common import UserError, atomic_path, log, write_json
from ..params import Params, student
from ..paths import MODEL, PSEUDO_LABELS, STUDENT_RUN, TEACHER
from ..trainer import train


def run(params: Params, callbacks: tuple = ()) -> None:
    """The stage. `callbacks` are extra Keras callbacks for every epoch: hooks for benchmarks."""
    if not params.unlabelled.enabled:
        if not TEACHER.is_file():
            raise UserError(f"{TEACHER}: missing; run `dvc repro train` first")
        with atomic_path(MODEL, suffix=".keras") as tmp:
            shutil.copyfile(TEACHER, tmp)
        write_logs(STUDENT_RUN, [])
        write_json(STUDENT_RUN.metrics, {"used": False, "model": str(TEACHER)})
        log(f"student: unlabelled.enabled is false; {MODEL} is the teacher's model")
        return
    train(student(params), STUDENT_RUN, callbacks, extra={"used": True, "pseudo_labelled": _kept(params)})


def _kept(params: Params) -> int:
    """How many test photos `pseudolabel` kept, from its own list (a dependency of this stage)."""
    try:
        with open(PSEUDO_LABELS, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        rows = []
    if not rows:
        raise UserError(f"{PSEUDO_LABELS}: the test photos were not labelled; run `dvc repro pseudolabel`")
    kept = sum(r["kept"] == "1" for r in rows)
    if not kept:
        raise UserError(
            f"{PSEUDO_LABELS}: none of {len(rows)} test photos reached unlabelled.threshold = "
            f"{params.unlabelled.threshold}; lower it"
        )
    return kept
