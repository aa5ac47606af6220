"""Stage `student`: each ensemble member's model (`student@SEED`), what the `ensemble` stage combines.

With `unlabelled` off it is the member's teacher itself, copied. With it on, the teacher's net goes on
learning, FixMatch-style (consistency.py), from the labelled photos and every one of the
competition's test photos, whose labels it never reads: on each, its answer for a mirrored
view teaches a strongly distorted view of the same photo, wherever it is sure enough.

It reads the prepared training and test photos, the teacher, and validation, which monitors, fits
the temperature (as for the teacher) and, with `unlabelled.fallback`, picks between the student and
its teacher: never the holdout, never a solution file. The fallback is there because a small pool
can make the student worse than the net it started from; shipping the teacher then costs nothing.
"""

from __future__ import annotations

import json
import shutil

from ..callbacks import write_logs
from ..common import UserError, atomic_path, log, scores, write_json
from ..consistency import Consistency
from ..inference import Predictor, predict_records
from ..params import Params, student
from ..paths import Member, prepared
from ..records import count_records
from ..trainer import train


def run(params: Params, callbacks: tuple = ()) -> None:
    """The stage, for the member `params.train.seed`. `callbacks` are extra Keras callbacks for every
    epoch: hooks for benchmarks."""
    member = Member(params.train.seed)
    teacher, report = member.teacher, member.student_run
    if not teacher.is_file():
        raise UserError(f"{teacher}: missing; run `dvc repro train@{member.seed}` first")
    if not params.unlabelled.enabled:
        with atomic_path(member.model, suffix=".keras") as tmp:
            shutil.copyfile(teacher, tmp)
        write_logs(report, [])
        write_json(report.metrics, {"used": False, "model": str(teacher)})
        write_json(member.unlabelled, {"test_photos": 0})
        log(f"{report.stage}: unlabelled.enabled is false; {member.model} is the teacher's model")
        return
    pool = count_records(prepared("test"))
    if not pool:
        raise UserError(f"{prepared('test')}: holds no test photos to learn from; set unlabelled.enabled to false")
    u = params.unlabelled
    # Written first: `dvc metrics show` says what the run is learning from while it trains.
    write_json(member.unlabelled, {"test_photos": pool})
    log(
        f"{report.stage}: FixMatch from {teacher} on the labelled photos and {pool} test photos, "
        f"{u.ratio} per labelled photo in each step, threshold {u.threshold}, weight {u.weight}"
    )
    extra = {"used": True, "test_photos": pool}
    history = train(student(params), report, callbacks, extra=extra, learner=Consistency(teacher, pool))
    if history and not any(r.get("past_threshold") for r in history):
        log(
            f"{report.stage}: warning: no test photo passed unlabelled.threshold = {u.threshold} in any epoch, so the "
            "student learnt from the labelled photos alone; lower the threshold"
        )
    shipped, val = fall_back(member) if u.fallback else ("student", None)
    report_json = json.loads(report.metrics.read_text())
    write_json(report.metrics, {**report_json, "shipped": shipped, **({"val": val} if val else {})})
    # A metric: `dvc metrics show` says whether the student or its teacher is the member's model.
    write_json(member.unlabelled, {"test_photos": pool, "student_shipped": int(shipped == "student")})


def fall_back(member: Member) -> tuple[str, dict]:
    """Ship the teacher where it scores a lower validation log loss than the student (the student on a tie).
    Returns which shipped, and both validation scores."""
    val = {}
    for name, path in (("student", member.model), ("teacher", member.teacher)):
        s = scores(*predict_records(Predictor(path), prepared("val"))[:2])
        val[name] = {"accuracy": s["accuracy"], "log_loss": s["log_loss"]}
    shipped = "teacher" if val["teacher"]["log_loss"] < val["student"]["log_loss"] else "student"
    if shipped == "teacher":
        with atomic_path(member.model, suffix=".keras") as tmp:
            shutil.copyfile(member.teacher, tmp)
    log(
        f"{member.student_run.stage}: validation log loss {val['student']['log_loss']} for the student, "
        f"{val['teacher']['log_loss']} for its teacher: {member.model} is the {shipped}'s model"
    )
    return shipped, val
