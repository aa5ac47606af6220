#!/usr/bin/env python
"""Weight-averaging probe: one training, several moving averages of its weights, each scored.

Re-runs the train stage in a project that `bench/accuracy.py --keep DIR` left behind (its
prepared data and params), exactly as `dvc repro` would, while keeping an exponential moving
average of the weights (`train.ema`) for each decay given, over the same last phase. Decay 0
is the trained weights themselves, so every average is compared with the net it came from,
same seed, same steps. Each weight set gets the shipped model's test-time views and its own
temperature fitted on validation (never on holdout); the script prints validation and
holdout accuracy and log loss for each, and writes every step's end time to
`step_times.csv` beside the project (what a slow epoch spends its time on).

    .venv/bin/python bench/averaging.py DIR/project --decays 0 0.99 0.995 0.998 0.999
    .venv/bin/python bench/averaging --steps DIR/step_times.csv DIR/project/metrics/members/42/train_log.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from benchlib import bench_arguments, overrides, with_overrides  # noqa: E402


def summarize_steps(step_times: Path, train_log: Path) -> dict:
    """Where an epoch's time goes: its first step (waiting for data) and any wait after its last step.

    `train_s` in the train log runs from the epoch's start to validation's (or the epoch's end),
    so whatever it holds beyond the steps was spent between the last step and validation.
    """
    import statistics

    ends: dict[int, list[float]] = {}
    for row in csv.DictReader(open(step_times)):
        ends.setdefault(int(row["epoch"]), []).append(float(row["t"]))  # step -1 is the epoch's start
    logged = {int(r["epoch"]): float(r["train_s"]) for r in csv.DictReader(open(train_log))}
    first = [t[1] - t[0] for t in ends.values()]
    waits = {e: round(logged[e] - (t[-1] - t[0]), 1) for e, t in ends.items() if e in logged}
    return {
        "epochs": len(ends),
        "first_step_s_total": round(sum(first), 1),
        "first_step_s_median": round(statistics.median(first), 2),
        "waits_after_last_step_over_1s": {e: w for e, w in waits.items() if w > 1},
        "train_s_total": round(sum(logged.values()), 1),
    }


def main() -> int:
    ap = bench_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), shared=False)
    ap.add_argument("project", type=Path, nargs="?", help="a project folder holding params.yaml and data/prepared")
    ap.add_argument("--decays", type=float, nargs="+", help="0 (the trained weights) or decays in [0.9, 1)")
    ap.add_argument(
        "--steps",
        type=Path,
        nargs=2,
        metavar=("STEP_TIMES", "TRAIN_LOG"),
        help="instead: summarise a kept run's step times against its train log",
    )
    args = ap.parse_args()
    if args.steps:
        print(json.dumps(summarize_steps(*args.steps), indent=2))
        return 0
    if args.project is None or not args.decays:
        ap.error("give a project folder and --decays (or --steps STEP_TIMES TRAIN_LOG)")
    if any(d != 0 and not 0.9 <= d < 1 for d in args.decays):
        ap.error("--decays: each must be 0 or in [0.9, 1)")

    project = args.project.resolve()
    os.chdir(project)  # the stages use paths relative to the project root, as under dvc repro
    import keras

    from dogs_vs_cats import params as P
    from dogs_vs_cats import trainer
    from dogs_vs_cats.calibrate import fit_temperature, p_dog_of_views, view_logits
    from dogs_vs_cats.callbacks import WeightAverage
    from dogs_vs_cats.common import scores
    from dogs_vs_cats.layers import TestTimeViews
    from dogs_vs_cats.model import from_params
    from dogs_vs_cats.paths import prepared
    from dogs_vs_cats.stages import train

    settings = overrides(args.set)
    # Any non-zero decay makes the train stage keep an average of its own, as it would ship it.
    settings["train.ema"] = next((d for d in args.decays if d), 0.99)
    params = P.from_dict(with_overrides(P.as_dict(P.load("params.yaml")), settings))

    averages = {d: None for d in args.decays}
    steps: list[tuple[int, int, float]] = []
    plan = trainer.phases(params)
    start = plan[-2][0] + 1 if len(plan) > 1 else 1

    class Probe(keras.callbacks.Callback):
        """One average per probed decay over the stage's last phase, the step times, the weights at the end."""

        def __init__(self):
            super().__init__()
            self.averages = {d: WeightAverage(d, start) for d in args.decays if d}
            self._epoch = 0

        def set_model(self, model):
            super().set_model(model)
            for a in self.averages.values():
                a.set_model(model)

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch + 1
            steps.append((self._epoch, -1, time.monotonic()))
            for a in self.averages.values():
                a.on_epoch_begin(epoch, logs)

        def on_train_batch_end(self, batch, logs=None):
            steps.append((self._epoch, batch, time.monotonic()))
            for a in self.averages.values():
                a.on_train_batch_end(batch, logs)

        def on_train_end(self, logs=None):
            averages[0] = self.model.get_weights()
            for d, a in self.averages.items():
                averages[d] = a.weights()

    train.run(params, callbacks=(Probe(),))
    with open(project.parent / "step_times.csv", "w", newline="") as f:
        csv.writer(f).writerows([("epoch", "step", "t")] + [(e, s, f"{t:.3f}") for e, s, t in steps])
    print(
        json.dumps(
            {"steps": summarize_steps(project.parent / "step_times.csv", project / "metrics/members/42/train_log.csv")}
        ),
        flush=True,
    )

    t = params.train
    size = params.prepare.image_size
    views = TestTimeViews(flip=t.tta, crop=t.tta_crop)
    net = from_params(t, size)
    results = []
    for decay, weights in averages.items():
        net.set_weights(weights)
        logits = {s: view_logits(net, views, prepared(s), size) for s in ("val", "holdout")}
        temperature = fit_temperature(*logits["val"])
        row = {"decay": decay, "temperature": round(temperature, 3)}
        for split, (z, y) in logits.items():
            scored = scores(p_dog_of_views(z, temperature), y)
            row[f"{split}_accuracy"], row[f"{split}_log_loss"] = scored["accuracy"], scored["log_loss"]
        results.append(row)
        print(
            f"decay {decay}: val accuracy {row['val_accuracy']:.4f}, log loss {row['val_log_loss']:.4f} | "
            f"holdout accuracy {row['holdout_accuracy']:.4f}, log loss {row['holdout_log_loss']:.4f}",
            flush=True,
        )
    print(json.dumps({"overrides": args.set, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
