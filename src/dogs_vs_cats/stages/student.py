"""Stage `student`: the model that `evaluate`, `submission` and `export` read (data/model).

With `unlabelled` off it is the teacher itself, copied. With it on, the teacher's net goes on
learning, FixMatch-style (consistency.py), from the labelled photos and every one of the
competition's test photos, whose labels it never reads: on each, its answer for a mirrored
view teaches a strongly distorted view of the same photo, wherever it is sure enough.

It reads the prepared training and test photos, the teacher, and validation, which only
monitors and fits the temperature, as for the teacher: never the holdout, never a solution file.
"""

from __future__ import annotations

import shutil

from ..callbacks import write_logs
from ..common import UserError, atomic_path, log, write_json
from ..consistency import Consistency
from ..params import Params, student
from ..paths import MODEL, STUDENT_RUN, TEACHER, UNLABELLED_METRICS, prepared
from ..records import count_records
from ..trainer import train


def run(params: Params, callbacks: tuple = ()) -> None:
    """The stage. `callbacks` are extra Keras callbacks for every epoch: hooks for benchmarks."""
    if not TEACHER.is_file():
        raise UserError(f"{TEACHER}: missing; run `dvc repro train` first")
    if not params.unlabelled.enabled:
        with atomic_path(MODEL, suffix=".keras") as tmp:
            shutil.copyfile(TEACHER, tmp)
        write_logs(STUDENT_RUN, [])
        write_json(STUDENT_RUN.metrics, {"used": False, "model": str(TEACHER)})
        write_json(UNLABELLED_METRICS, {"test_photos": 0})
        log(f"student: unlabelled.enabled is false; {MODEL} is the teacher's model")
        return
    pool = count_records(prepared("test"))
    if not pool:
        raise UserError(f"{prepared('test')}: holds no test photos to learn from; set unlabelled.enabled to false")
    u = params.unlabelled
    # Written first: `dvc metrics show` says what the run is learning from while it trains.
    write_json(UNLABELLED_METRICS, {"test_photos": pool})
    log(
        f"student: FixMatch from {TEACHER} on the labelled photos and {pool} test photos, {u.ratio} per labelled "
        f"photo in each step, threshold {u.threshold}, weight {u.weight}"
    )
    extra = {"used": True, "test_photos": pool}
    history = train(student(params), STUDENT_RUN, callbacks, extra=extra, learner=Consistency(TEACHER, pool))
    if history and not any(r.get("past_threshold") for r in history):
        log(
            f"student: warning: no test photo passed unlabelled.threshold = {u.threshold} in any epoch, so the "
            "student learnt from the labelled photos alone; lower the threshold"
        )
