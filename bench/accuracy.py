#!/usr/bin/env python
"""Accuracy benchmark: the whole pipeline on ../shared/kaggle (or --shared DIR) with the default params.

Runs `dvc repro` in a fresh copy of the project against the fake Kaggle server (the
real kaggle client downloads the shared competition files), submits the result to
the fake server, and prints holdout accuracy, log loss, the Kaggle score and wall
time. `--set train.epochs=10` style overrides try a lever; `--keep DIR` keeps the run;
`--shared ../shared/kaggle-large` runs on the competition-sized fixture.

    .venv/bin/python bench/accuracy.py [--recipe FILE] [--set KEY=VALUE ...] [--shared DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
from benchlib import (  # noqa: E402
    BIN,
    bench_arguments,
    copy_project,
    fake_kaggle_for,
    machine,
    overrides,
    params_changed,
    project_env,
    recipe,
    run_group,
    set_params,
)


def teacher_holdout(project: Path, env: dict, threshold: float) -> dict:
    """The teacher's own holdout scores, beside the student's that evaluate wrote, and how right it is
    on the holdout photos it is `threshold` sure of: the best estimate of how right the student's first
    unlabelled targets are (the test photos' labels stay unread). Runs this file in the copy, on its own code."""
    out = subprocess.run(
        [sys.executable, __file__, "--score-teacher", str(threshold)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def score_teacher(threshold: float) -> None:
    """In a project: print the teacher's holdout scores, and its accuracy on the photos it is sure of."""
    import numpy as np

    from dogs_vs_cats.common import scores
    from dogs_vs_cats.inference import Predictor, predict_records
    from dogs_vs_cats.params import load
    from dogs_vs_cats.paths import Member, prepared

    p, y, _ = predict_records(Predictor(Member(load().ensemble.seeds[0]).teacher), prepared("holdout"))
    kept, label = np.maximum(p, 1 - p) >= threshold, (p >= 0.5).astype(int)
    s = scores(p, y)
    print(
        json.dumps(
            {
                "holdout_accuracy": s["accuracy"],
                "holdout_log_loss": s["log_loss"],
                "holdout_share_sure": round(float(kept.mean()), 4),
                "holdout_accuracy_when_sure": round(float(np.mean(label[kept] == y[kept])), 4),
            }
        )
    )


def edge_submission(out: str) -> None:
    """In a project: the edge net's own submission file, written as the submission stage writes the ensemble's."""
    from dogs_vs_cats.params import load
    from dogs_vs_cats.paths import EDGE_MODEL
    from dogs_vs_cats.stages.submission import write

    write(load(), EDGE_MODEL, Path(out))


def submit(project: Path, env: dict, file: str) -> float | None:
    """Upload `file` to the fake Kaggle server with the real client; its public log loss, or None."""
    out = subprocess.run(
        [str(BIN / "dogs-vs-cats"), "submit", "--file", file, "--message", "bench/accuracy"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    score = re.search(r"public score \(log loss\): ([0-9.]+)", out.stdout)
    return float(score.group(1)) if score else None


def member_reports(project: Path, seeds: list[int]) -> dict:
    """Each member's training reports: its teacher's and its student's."""
    out = {}
    for seed in seeds:
        folder = project / "metrics/members" / str(seed)
        out[str(seed)] = {
            "train": json.loads((folder / "train.json").read_text()),
            "student": json.loads((folder / "student.json").read_text()),
            "unlabelled": json.loads((folder / "unlabelled.json").read_text()),
        }
    return out


def main() -> int:
    # SIGTERM (kill, pkill) becomes SystemExit, so run_group's cleanup runs as it does for Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = bench_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="with --keep: finish a stopped run in that folder (--set is not applied again; the result records "
        "the kept params that differ from this checkout's); dvc repro runs only what is left, so memory and "
        "repro time cover only those stages",
    )
    ap.add_argument("--recipe", type=Path, help="a YAML file of params to override (bench/recipes/); --set wins")
    ap.add_argument("--note", default="", help="run conditions for the result file: alone or shared, and why")
    ap.add_argument("--score-teacher", type=float, metavar="THRESHOLD", help=argparse.SUPPRESS)
    ap.add_argument("--edge-submission", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.score_teacher is not None:
        score_teacher(args.score_teacher)
        return 0
    if args.edge_submission:
        edge_submission(args.edge_submission)
        return 0
    if args.resume and not (args.keep and (args.keep / "project").is_dir()):
        ap.error("--resume needs --keep DIR of an earlier run (DIR/project)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    if work.exists() and args.keep and not args.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    project = copy_project(work / "project") if not (work / "project").exists() else work / "project"
    (work / "home").mkdir(exist_ok=True)
    settings = {**recipe(args.recipe), **overrides(args.set)} if args.recipe else overrides(args.set)
    if settings and not args.resume:
        set_params(project, **settings)
    if args.resume:
        settings = params_changed(project, ROOT)

    with fake_kaggle_for(args.shared) as fake:
        # The copy's own code runs, not this checkout's (which the venv's editable install points at):
        # what dvc.lock hashes is what ran, even if the checkout is edited meanwhile.
        env = project_env({**fake.env(), "PYTHONPATH": str(project / "src")}, home=work / "home")
        start = time.monotonic()
        stages = {}
        repro = run_group([str(BIN / "dvc"), "repro"], memory=stages, cwd=project, env=env)
        wall = time.monotonic() - start
        if repro.returncode != 0:
            print(f"bench/accuracy: dvc repro failed (exit {repro.returncode}); stages: {stages}", file=sys.stderr)
            return 1
        kaggle = submit(project, env, "data/submission.csv")
        seeds = yaml.safe_load((project / "params.yaml").read_text())["ensemble"]["seeds"]
        edge_kaggle = None
        if len(seeds) > 1:
            subprocess.run(
                [sys.executable, __file__, "--edge-submission", "data/edge_submission.csv"],
                cwd=project,
                env=env,
                check=True,
            )
            edge_kaggle = submit(project, env, "data/edge_submission.csv")
    ev = json.loads((project / "metrics/eval.json").read_text())
    members = member_reports(project, seeds)
    first = members[str(seeds[0])]
    train, student, unlabelled = first["train"], first["student"], first["unlabelled"]
    unlabelled_params = yaml.safe_load((project / "params.yaml").read_text())["unlabelled"]
    teacher = teacher_holdout(project, env, unlabelled_params["threshold"]) if student.get("used") else None
    ensemble = json.loads((project / "metrics/ensemble.json").read_text())
    edge = json.loads((project / "metrics/export_forms.json").read_text())["keras"]
    made = project / "metrics/edge.json"  # a project from before the edge stage: ensemble.json named the member
    made = json.loads(made.read_text()) if made.exists() else {"distilled": False, "seed": ensemble.get("edge")}
    train_wall = sum(m["train"]["wall_s"] + m["student"].get("wall_s", 0) for m in members.values())
    train_wall += made.get("wall_s", 0)  # distillation is training too
    result = {
        "overrides": settings,
        **({"note": args.note} if args.note else {}),
        "competition": str(args.shared),
        "holdout_accuracy": ev["holdout"]["accuracy"],
        "holdout_log_loss": ev["holdout"]["log_loss"],
        "holdout_roc_auc": ev["holdout"]["roc_auc"],
        "val_accuracy": ev["val"]["accuracy"],
        "val_log_loss": ev["val"]["log_loss"],
        "kaggle_log_loss": kaggle,
        "model_params": train["params"],
        "model_bytes": train["model_bytes"],
        "train_wall_s": round(train_wall, 1),
        "train_images_per_s": train["train_images_per_s"],
        "unlabelled": {**unlabelled, **({"params": unlabelled_params} if student.get("used") else {})},
        "teacher": {"train_wall_s": train["wall_s"], **(teacher or {})} if teacher else None,
        "student": student,
        "precision": train["precision"],
        **(
            {
                "members": {
                    s: {
                        "holdout": ev["members"][s],
                        "val": ensemble["val"][s],
                        "train_wall_s": m["train"]["wall_s"] + m["student"].get("wall_s", 0),
                    }
                    for s, m in members.items()
                },
                "spread": ev["spread"],
                "ensemble": {k: ensemble[k] for k in ("temperature", "val_ensemble")},
                "edge": {
                    "seed": made["seed"],
                    "distilled": made["distilled"],
                    **{k: made[k] for k in ("epochs", "test_photos", "val_log_loss", "wall_s") if made["distilled"]},
                    "holdout_accuracy": edge["accuracy"],
                    "holdout_log_loss": edge["log_loss"],
                    "kaggle_log_loss": edge_kaggle,
                    "model_bytes": edge["bytes"],
                },
            }
            if len(seeds) > 1
            else {}
        ),
        "repro_wall_s": round(wall, 1),
        "resumed": args.resume,
        "machine": machine(),
        "stages": stages,
    }
    print(json.dumps(result, indent=2))
    print(
        f"holdout accuracy {result['holdout_accuracy']:.4f} | holdout log loss {result['holdout_log_loss']:.4f} | "
        f"fake Kaggle score {result['kaggle_log_loss']} | train {result['train_wall_s'] / 60:.1f} min | "
        f"dvc repro {wall / 60:.1f} min"
    )
    print("peak memory: " + ", ".join(f"{k} {v['peak_rss_mb']:,} MB" for k, v in stages.items()))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
