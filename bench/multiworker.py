#!/usr/bin/env python
"""Multi-worker benchmark: `train.strategy: multi_worker` against fit() on the shared photos.

Prepares the shared competition files once in a copy of the project, then trains the same
recipe twice: once with the default strategy (Keras' fit()), and once as `--workers` workers
on localhost (`TF_CONFIG`, each in its own copy, as on separate machines), which runs the
project's own training loop (keras-team/keras#20585). Prints each run's validation figures,
whether all workers ended with the same model, and wall times. On one machine the workers
share its cores, so the wall times say what the synchronisation costs here, not what a
cluster gains.

    .venv/bin/python bench/multiworker.py [--workers 2] [--epochs 12] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    BIN,
    bench_arguments,
    copy_project,
    free_ports,
    machine,
    overrides,
    project_env,
    set_params,
    train_workers,
)

ROOT = Path(__file__).resolve().parents[1]


def _train(folders: list[Path], env: dict, cluster: dict | None = None) -> float:
    """Run the train stage in each folder at once; the wall time until the last one ends."""
    t0 = time.monotonic()
    for folder, (code, err) in zip(folders, train_workers(folders, cluster, env)):
        if code != 0:
            sys.exit(f"bench/multiworker: train failed in {folder}:\n{err[-3000:]}")
    return time.monotonic() - t0


def main() -> int:
    ap = bench_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--epochs", type=int, default=12, help="train.epochs; the first three quarters at train.low_res_size"
    )
    args = ap.parse_args()
    if args.workers < 2 or args.epochs < 2:
        ap.error(f"--workers {args.workers} --epochs {args.epochs}: give at least 2 of each")
    settings = {
        "data.source": str(args.shared),
        "train.epochs": args.epochs,
        "train.low_res_epochs": args.epochs * 3 // 4,
        "train.warmup_epochs": 1,
        "train.validation_freq": args.epochs,
        **overrides(args.set),
    }

    import keras
    import numpy as np

    import dogs_vs_cats.layers  # noqa: F401  (registers the model's layers for loading)

    with tempfile.TemporaryDirectory(prefix="bench-multiworker-") as tmp:
        single = copy_project(Path(tmp) / "fit")
        set_params(single, **settings)
        env = project_env()
        for stage in ("download", "split", "prepare"):
            subprocess.run([str(BIN / "dogs-vs-cats"), stage], cwd=single, env=env, check=True, capture_output=True)
        workers = [Path(shutil.copytree(single, Path(tmp) / f"worker{i}", symlinks=True)) for i in range(args.workers)]
        for folder in workers:
            set_params(folder, **{"train.strategy": "multi_worker"})
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(args.workers)]}

        print("bench/multiworker: training with fit()", file=sys.stderr, flush=True)
        wall_fit = _train([single], env)
        print(f"bench/multiworker: training on {args.workers} workers", file=sys.stderr, flush=True)
        wall_workers = _train(workers, env, cluster)

        def figures(folder: Path, wall: float) -> dict:
            m = json.loads((folder / "metrics/members/42/train.json").read_text())
            return {k: m[k] for k in ("val_accuracy", "val_log_loss", "accuracy", "precision")} | {
                "wall_s": round(wall, 1)
            }

        weights = [keras.models.load_model(f / "data/members/42/teacher/model.keras").get_weights() for f in workers]
        same = all(np.array_equal(a, b) for other in weights[1:] for a, b in zip(weights[0], other))
        result = {
            "machine": machine(),
            "overrides": settings,
            "fit": figures(single, wall_fit),
            "multi_worker": figures(workers[0], wall_workers) | {"workers": args.workers, "identical_models": same},
        }
    print(json.dumps(result, indent=2))
    f, w = result["fit"], result["multi_worker"]
    print(
        f"val accuracy / log loss after {args.epochs} epochs: fit() {f['val_accuracy']:.3f} / {f['val_log_loss']:.3f} "
        f"in {f['wall_s']:.0f} s; {args.workers} workers {w['val_accuracy']:.3f} / {w['val_log_loss']:.3f} "
        f"in {w['wall_s']:.0f} s (sharing this machine's cores); workers' models identical: {same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
