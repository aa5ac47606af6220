#!/usr/bin/env python
"""What `submission.clip` costs or saves: a kept bench/accuracy.py run's model scored at several clips.

Log loss punishes a confident mistake without bound, so the submission clips every probability to
[clip, 1 - clip]; but each clip also taxes every sure right answer, -log(1 - clip) per photo. Which
wins depends on how sure and how right the model is. This predicts the run's validation, holdout and
test photos once, with the run's own code and model, then gives the log loss at each clip on
validation and holdout, and on the test photos as the fake Kaggle server scores a submission
written at that clip (the real client uploads each).

    .venv/bin/python bench/clip.py --keep /work/runs/X --shared ../shared/kaggle-large [--clips 0.001,0.01]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from accuracy import submit
from benchlib import bench_arguments, fake_kaggle_for, machine, project_env
from dogs_vs_cats.common import P_FLOOR


def predict(out: str, model: str) -> None:
    """In a project: P(dog), labels and test ids of every prepared split, saved to `out`."""
    from dogs_vs_cats.inference import Predictor, predict_records
    from dogs_vs_cats.paths import prepared

    predictor, arrays = Predictor(Path(model)), {}
    for split in ("val", "holdout", "test"):
        p, y, names = predict_records(predictor, prepared(split))
        arrays[f"{split}_p"], arrays[f"{split}_y"] = np.asarray(p, np.float64), np.asarray(y)
        if split == "test":
            arrays["test_id"] = np.array([int(Path(n).stem) for n in names])
    np.savez(out, **arrays)


def log_loss(p: np.ndarray, y: np.ndarray, clip: float) -> float:
    """Log loss at `clip`; below the pipeline's own floor, at that floor, as `evaluate` scores."""
    floor = max(clip, P_FLOOR)
    return float(skm.log_loss(y, np.clip(p, floor, 1 - floor), labels=[0, 1]))


def share_sure(p: np.ndarray) -> float:
    """The share of photos the model gives P(dog) or P(cat) of at least 0.99."""
    return round(float(np.mean(np.maximum(p, 1 - p) >= 0.99)), 4)


def main() -> int:
    ap = bench_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--keep", type=Path, help="a kept bench/accuracy.py run (its DIR/project)")
    ap.add_argument(
        "--model", default="data/model/model.keras", help="the model in the project to score (default: the shipped one)"
    )
    ap.add_argument("--clips", default="0.0001,0.0005,0.001,0.002,0.005,0.01,0.02", help="comma-separated clips")
    ap.add_argument("--predict", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.predict:
        predict(args.predict, args.model)
        return 0
    project = (args.keep / "project").resolve() if args.keep else None
    if not project or not project.is_dir():
        ap.error("--keep DIR must name a kept bench/accuracy.py run (DIR/project)")
    clips = [float(c) for c in args.clips.split(",")]
    if any(not 0 < c < 0.5 for c in clips):
        ap.error("--clips: each clip must be in (0, 0.5)")

    with tempfile.TemporaryDirectory(dir=project / "data") as tmp, fake_kaggle_for(args.shared) as fake:
        env = project_env({**fake.env(), "PYTHONPATH": str(project / "src")}, home=args.keep / "home")
        npz = Path(tmp) / "p.npz"
        cmd = [sys.executable, __file__, "--predict", str(npz), "--model", args.model]
        subprocess.run(cmd, cwd=project, env=env, check=True)
        a = np.load(npz)
        rows = []
        for c in clips:
            sub = Path(tmp) / f"clip-{c:g}.csv"
            lines = [f"{i},{np.clip(p, c, 1 - c):.6f}" for i, p in sorted(zip(a["test_id"].tolist(), a["test_p"]))]
            sub.write_text("id,label\n" + "\n".join(lines) + "\n")
            row = {
                "clip": c,
                **{f"{s}_log_loss": round(log_loss(a[f"{s}_p"], a[f"{s}_y"], c), 5) for s in ("val", "holdout")},
            }
            row["kaggle_log_loss"] = submit(project, env, str(sub))
            rows.append(row)
            print(
                f"clip {c:<7g} validation {row['val_log_loss']:.5f}  holdout {row['holdout_log_loss']:.5f}  "
                f"Kaggle {row['kaggle_log_loss']}",
                file=sys.stderr,
            )
    result = {
        "run": str(args.keep),
        "model": args.model,
        "share_sure_0.99": {s: share_sure(a[f"{s}_p"]) for s in ("val", "holdout", "test")},
        "clips": rows,
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
