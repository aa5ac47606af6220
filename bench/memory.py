#!/usr/bin/env python
"""Memory benchmark: peak memory of every stage at the full competition's size.

Kaggle's competition has 25,000 labelled and 12,500 test photos; `../shared/kaggle` holds
4,000 and 500 of them. This builds a competition folder of the full size from the shared
photos, each reused under new names (a photo's content does not change how the pipeline holds
memory; its size does, so all of them take turns, the full-size originals included), then runs
every stage from download to export in a copy of the project, with every labelled photo
split into train / val / holdout, at `--size` px (227 by default: the paper's input) and
`--epochs` training epochs at that size. A sampler adds up the resident memory (RSS) of each
stage's processes (the stage and its decode workers) every 0.1 s: the peak is what the stage
needs from the machine (an upper bound: pages the processes share count once per process).

    .venv/bin/python bench/memory.py [--train 25000] [--test 12500] [--size 227] [--epochs 1] [--keep DIR]

`--train 4000 --test 500` runs it on the shared files as they are, for comparison.
`--as-is --shared ../shared/kaggle-large` runs on that folder's photos as they are: 15,000
labelled and 8,000 test photos, every one distinct and real.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from benchlib import (  # noqa: E402
    BIN,
    StageMemory,
    bench_arguments,
    copy_project,
    machine,
    overrides,
    project_env,
    set_params,
    with_overrides,
)
from dogs_vs_cats import params as P  # noqa: E402
from dogs_vs_cats.stages import STAGES  # noqa: E402


def build_competition(shared: Path, dest: Path, n_train: int, n_test: int) -> None:
    """train.zip (n_train photos, half cats), test.zip (n_test) and sample_submission.csv in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(shared / "train.zip") as src:
        by_label = {"cat": [], "dog": []}
        for name in sorted(src.namelist()):
            base = name.rsplit("/", 1)[-1]
            if base.endswith(".jpg") and base.split(".")[0] in by_label:
                by_label[base.split(".")[0]].append(name)
        with zipfile.ZipFile(dest / "train.zip", "w", zipfile.ZIP_STORED) as out:  # JPEGs do not compress
            for label, names in by_label.items():
                for i in range(n_train // 2):
                    out.writestr(f"train/{label}.{i}.jpg", src.read(names[i % len(names)]))
    with zipfile.ZipFile(shared / "test.zip") as src:
        names = sorted(n for n in src.namelist() if n.endswith(".jpg"))
        with zipfile.ZipFile(dest / "test.zip", "w", zipfile.ZIP_STORED) as out:
            for i in range(n_test):
                out.writestr(f"test/{i + 1}.jpg", src.read(names[i % len(names)]))
    with open(dest / "sample_submission.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        writer.writerows([i + 1, 0.5] for i in range(n_test))


def run_stage(stage: str, project: Path, env: dict) -> dict:
    """Run one stage, sampling its process tree's memory; its figures and wall time."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "dogs-vs-cats"), stage],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with StageMemory(proc.pid, STAGES) as sampler:
        output = proc.stdout.read()
        proc.wait()
    if proc.returncode != 0:
        sys.exit(f"bench/memory: stage {stage} failed:\n{output[-3000:]}")
    # A stage that ends before the first sample (download, from a cache) has no figures of its own.
    seen = sampler.figures().get(stage, {"peak_rss_mb": None, "largest_process_mb": None})
    return {**seen, "wall_s": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = bench_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--train", type=int, default=25_000, help="labelled photos (the competition has 25,000)")
    ap.add_argument("--test", type=int, default=12_500, help="test photos (the competition has 12,500)")
    ap.add_argument("--size", type=int, default=227, help="prepare.image_size")
    ap.add_argument("--epochs", type=int, default=1, help="train.epochs, all at --size")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it")
    ap.add_argument("--as-is", action="store_true", help="the --shared folder's photos as they are, none reused")
    args = ap.parse_args()
    # The split's sizes as the run will have them: params.yaml's, or what --set overrides.
    split = P.from_dict(with_overrides(P.as_dict(P.load(ROOT / "params.yaml")), overrides(args.set))).split
    if args.as_is:
        with zipfile.ZipFile(args.shared / "train.zip") as z:
            args.train = sum(n.endswith(".jpg") for n in z.namelist())
        with zipfile.ZipFile(args.shared / "test.zip") as z:
            args.test = sum(n.endswith(".jpg") for n in z.namelist())
    n_train = args.train - split.n_val - split.n_holdout
    if n_train < 2 or args.train % 2 or args.test < 1:
        ap.error(
            f"--train {args.train} --test {args.test}: give an even --train above "
            f"split.n_val + split.n_holdout ({split.n_val + split.n_holdout}) and --test >= 1"
        )

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    if args.keep and work.exists():
        shutil.rmtree(work)
    try:
        competition, project = work / "competition", work / "project"
        project.mkdir(parents=True)
        t0 = time.monotonic()
        if args.as_is:
            competition = args.shared
        else:
            build_competition(args.shared, competition, args.train, args.test)
        print(
            f"bench/memory: {args.train} + {args.test} photos in {competition} ({time.monotonic() - t0:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
        copy_project(project)
        set_params(
            project,
            **{
                "data.source": str(competition),
                "split.n_train": n_train,
                "prepare.image_size": args.size,
                "train.epochs": args.epochs,
                "train.low_res_size": 0,
                "train.warmup_epochs": 0,
                **overrides(args.set),
            },
        )
        env = project_env({"PYTHONPATH": str(project / "src")})  # the copy's code, as bench/accuracy runs it
        stages = {}
        for stage in STAGES:
            stages[stage] = run_stage(stage, project, env)
            print(f"bench/memory: {stage}: {stages[stage]}", file=sys.stderr, flush=True)
        store = {
            p.name: round(p.stat().st_size / 2**20) for p in sorted((project / "data/prepared").glob("*.tfrecord"))
        }
        result = {
            "machine": machine(),
            "photos": {"train": args.train, "test": args.test, "distinct": args.as_is, "from": str(args.shared)},
            "split": {"n_train": n_train, "n_val": split.n_val, "n_holdout": split.n_holdout},
            "image_size": args.size,
            "epochs": args.epochs,
            "prepared_mb": store,
            "stages": stages,
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    peak = max(stages.values(), key=lambda s: s["peak_rss_mb"] or 0)
    print(
        f"peak memory at {args.train:,} + {args.test:,} photos, {args.size} px: "
        + ", ".join(f"{k} {v['peak_rss_mb'] or 0:,} MB" for k, v in stages.items())
        + f"; the most any stage needs: {peak['peak_rss_mb']:,} MB (prepared store {sum(store.values()):,} MB on disk)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
