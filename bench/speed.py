#!/usr/bin/env python
"""Speed benchmark: prepare, train (real input pipeline vs synthetic batches), predict, peak memory.

Prints figures and the ratios that matter on a noisy shared machine (measured in the
same run): train throughput on the real streamed, augmented pipeline over the same
model on synthetic in-memory batches, and prepare on all cores over one core.

    .venv/bin/python bench/speed [--images 2000] [--epochs 2] [--repeats 3] [--precision float32]

`--grid 96 128` instead times the default net on synthetic batches with no batch norm,
Keras' BatchNormalization, the project's fused BatchNorm and that on conv1 and the squeezes
only (`train.batch_norm_expand: false`), in float32 and bf16 at each
size (batch norm's cost, and what bf16 buys with each): the four nets live in one process
per precision and size and take turns, one epoch each, for `--epochs` rounds.

`--profile 128` instead traces those four nets' training steps with TensorFlow's profiler
and prints the time per step of each op type: where batch norm's remaining cost goes.

`--input-only` instead times the training input pipeline alone (streamed from the prepared
store, shuffled, augmented and batched as the train stage feeds the model, at the low-res and
the full size) on all cores and on one core: what a faster device could be fed, per core.

`--repeats N` alternates N real and N synthetic training measurements and reports the
medians and the median of the N paired ratios, so a slow spell on a shared host
lands on one pair instead of deciding the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import SHARED_COMPETITION as SHARED
from benchlib import machine

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, workdir: Path, n: int, epochs: int, precision: str = "auto") -> dict:
    """Run one measurement in a fresh process, so its peak RSS is its own."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--dir",
            str(workdir),
            "--images",
            str(n),
            "--epochs",
            str(epochs),
            "--precision",
            precision,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    if out.returncode != 0:
        sys.exit(f"bench/speed: {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(mode: str, workdir: Path, n: int, epochs: int, precision: str) -> dict:
    os.chdir(workdir)
    from dogs_vs_cats import params as P

    params = P.load(ROOT / "params.yaml")
    size = params.prepare.image_size
    if mode.startswith("prepare"):
        from dogs_vs_cats.stages.prepare import decode_pool, write_records
        from dogs_vs_cats.stages.split import labelled_names

        by_label, _ = labelled_names(SHARED / "train.zip")
        items = [(name, label) for label in (0, 1) for name in by_label[label][: n // 2]]
        workers = os.cpu_count() or 1
        if mode == "prepare1":
            # Truly one core: the parent (TFRecord writing) and its worker share it, as all of them share all cores.
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
            workers = 1
        with decode_pool(workers) as pool:
            t0 = time.monotonic()
            done, _, _ = write_records(pool, SHARED / "train.zip", items, size, Path(f"train{n}.tfrecord"), "bench")
            rate = done / (time.monotonic() - t0)
            if mode == "prepare":
                write_records(pool, SHARED / "train.zip", items[:64], size, Path("val.tfrecord"), "bench")
        return {"images_per_s": round(rate, 1), "workers": workers, "peak_rss_mb": _rss()}

    import keras

    from dogs_vs_cats.inputs import train_dataset
    from dogs_vs_cats.model import from_params
    from dogs_vs_cats.recipe import choose_precision
    from dogs_vs_cats.trainer import build

    t = params.train
    precision = choose_precision(precision)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    steps = -(-n // t.batch_size)
    if mode.startswith("input"):
        return _input_only(params, mode, n, epochs)
    if mode.startswith(("grid/", "profile/")):
        return _grid_cell(params, mode, n, epochs, precision)
    if mode == "train_real":
        import shutil

        prepared = Path("data/prepared")
        prepared.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"train{n}.tfrecord", prepared / "train.tfrecord")
        shutil.copy("val.tfrecord", prepared / "val.tfrecord")
        train_ds = train_dataset(params, size)
        data = dict(x=train_ds, steps_per_epoch=steps)  # the stream is endless, as in the train stage
    else:
        x, y = _synthetic(n, size)
        data = dict(x=x, y=y, batch_size=t.batch_size)
    net = build(params, steps)
    net.fit(**data, epochs=1, verbose=0)  # warm-up: tracing and first allocation
    t0 = time.monotonic()
    net.fit(**data, epochs=epochs, verbose=0)
    rate = n * epochs / (time.monotonic() - t0)
    result = {"images_per_s": round(rate, 1), "precision": precision, "peak_rss_mb": _rss()}
    if mode == "train_synthetic":
        from dogs_vs_cats.inference import Predictor

        keras.mixed_precision.set_global_policy("float32")
        model_path = Path("model.keras")
        from_params(t, size).save(model_path)
        pred = Predictor(model_path)
        batch = x[:256].astype("uint8")
        pred.p_dog(batch[:32])
        t0 = time.monotonic()
        for i in range(0, len(batch), 64):
            pred.p_dog(batch[i : i + 64])
        result["predict_batch_images_per_s"] = round(len(batch) / (time.monotonic() - t0), 1)
        t0 = time.monotonic()
        for i in range(50):
            pred.p_dog_one(batch[i])
        result["predict_single_images_per_s"] = round(50 / (time.monotonic() - t0), 1)
    return result


def _synthetic(n: int, size: int):
    """`n` random photos and alternating labels, in memory: the input pipeline's cost removed."""
    import keras
    import numpy as np

    x = np.random.default_rng(0).integers(0, 256, (n, size, size, 3)).astype("float32")
    return x, keras.utils.to_categorical(np.arange(n) % 2, 2)


NORMS = (
    "none",
    "keras",
    "fused",
    "squeeze",
)  # squeeze: ours on conv1 and the squeezes only (train.batch_norm_expand: false)


def _net(params, size: int, norm: str, steps: int):
    """The default net with no batch norm, Keras' BatchNormalization, ours (fused), or ours on the squeezes only."""
    import dataclasses

    from dogs_vs_cats.layers import BatchNorm, with_keras_batch_norm
    from dogs_vs_cats.model import from_params
    from dogs_vs_cats.recipe import compile_for_training

    t = dataclasses.replace(params.train, batch_norm=norm != "none", batch_norm_expand=norm != "squeeze")
    net = from_params(t, size)
    if norm == "keras":
        net = with_keras_batch_norm(net)
        assert not any(isinstance(layer, BatchNorm) for layer in net.layers)
    compile_for_training(net, t, steps)
    return net


def _epoch_clock():
    import keras

    class EpochClock(keras.callbacks.Callback):
        """An epoch's own time, from its first step to its last: fit()'s set-up and tear-down of
        the dataset iterator, which ended on a coarse clock of whole seconds here, stay outside it."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.monotonic() - self.t0

    return EpochClock()


def _grid_cell(params, mode: str, n: int, epochs: int, precision: str) -> dict:
    """Synthetic training throughput of the default net at one size, per kind of normalisation.

    `mode` grid/SIZE builds all four nets (NORMS) in this process and times them in `epochs`
    interleaved rounds of one one-epoch fit() each: this host has slow spells that halve
    throughput for many seconds, and separate processes (the first version of this grid) let one
    spell decide a whole cell. A round's epochs run within seconds of each other, so the
    per-round ratios are what to trust. `profile/SIZE/NORM` times one net instead and traces
    it with TensorFlow's profiler, returning each op type's time per step.
    """
    import tensorflow as tf

    batch = params.train.batch_size
    steps = -(-n // batch)
    kind, size, *norm = mode.split("/")
    size = int(size)
    x, y = _synthetic(batch, size)
    # One batch, repeated: no input work at all. Keras' own NumPy path (shuffling and slicing
    # `n` float32 photos every epoch) held every net to the same rate in this host's slow spells.
    data = tf.data.Dataset.from_tensors((tf.constant(x), tf.constant(y))).repeat()
    nets = {nm: _net(params, size, nm, steps) for nm in (norm or NORMS)}
    for net in nets.values():
        net.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)  # tracing and first allocation
    if kind == "profile":
        tf.profiler.experimental.start("profile")
    rates: dict[str, list[float]] = {nm: [] for nm in nets}
    clock = _epoch_clock()
    for _ in range(epochs):
        for nm, net in nets.items():
            net.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[clock])
            rates[nm].append(round(steps * batch / clock.seconds, 1))
    result = {"images_per_s": rates, "precision": precision}
    if kind == "profile":
        tf.profiler.experimental.stop()
        result["op_ms_per_step"] = {
            op: round(1000 * s / (steps * epochs), 2) for op, s in _op_seconds(Path("profile")).items()
        }
    return result


def _op_seconds(logdir: Path) -> dict[str, float]:
    """Seconds spent in each TensorFlow op type, from the profiler's trace in `logdir`.

    Op events are named "scope/name:Type" on the executor's lines; summed over its
    inter-op threads, so the total can exceed the wall time when ops run side by side.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(max(logdir.rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime).read_bytes())
    seconds: dict[str, float] = {}
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and "::" not in name:  # "ExecutorState::Process" etc. wrap the ops
                    op = name.rsplit(":", 1)[1]
                    seconds[op] = seconds.get(op, 0.0) + event.duration_ps / 1e12
    return seconds


def profile(images: int, epochs: int, size: int, precision: str, top: int = 14) -> None:
    """Where a training step's time goes, per op type, with no / Keras' / fused / squeeze-only batch norm."""
    norms = NORMS
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        for norm in norms:
            runs[norm] = child(f"profile/{size}/{norm}", Path(tmp), images, epochs, precision)
            runs[norm]["images_per_s"] = statistics.median(runs[norm]["images_per_s"][norm])
    ops = {nm: r["op_ms_per_step"] for nm, r in runs.items()}
    ranked = sorted(set().union(*ops.values()), key=lambda op: -max(o.get(op, 0.0) for o in ops.values()))
    print(json.dumps({"machine": machine(), "images": images, "epochs": epochs, "size": size, "runs": runs}, indent=2))
    print(
        f"op time per training step, ms ({runs['none']['precision']}, {size} px, "
        f"{images} images x {epochs} epochs; summed over TensorFlow's inter-op threads):"
    )
    print("| op type | no batch norm | Keras BatchNormalization | fused BatchNorm (ours) | ours, squeezes only |")
    print("| --- | --- | --- | --- | --- |")
    for op in ranked[:top]:
        print(f"| {op} | " + " | ".join(f"{ops[nm].get(op, 0.0):.1f}" for nm in norms) + " |")
    rest = [sum(v for op, v in ops[nm].items() if op not in ranked[:top]) for nm in norms]
    print("| (all other ops) | " + " | ".join(f"{v:.1f}" for v in rest) + " |")
    print("| **total op time** | " + " | ".join(f"{sum(ops[nm].values()):.1f}" for nm in norms) + " |")
    print("| wall img/s | " + " | ".join(f"{runs[nm]['images_per_s']:.0f}" for nm in norms) + " |")


def grid(images: int, epochs: int, sizes: list[int]) -> None:
    """Batch norm's cost per precision and size: synthetic steps only, interleaved rounds (see _grid_cell)."""
    precisions = ["float32", "mixed_bfloat16"]
    cells = {}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        for precision in precisions:
            for size in sizes:
                cells[(precision, size)] = rates = child(f"grid/{size}", Path(tmp), images, epochs, precision)[
                    "images_per_s"
                ]
                print(
                    f"bench/speed: {precision} {size} px: " + ", ".join(f"{nm} {rates[nm]}" for nm in NORMS) + " img/s",
                    file=sys.stderr,
                    flush=True,
                )
    med = {(p, s, nm): statistics.median(r[nm]) for (p, s), r in cells.items() for nm in NORMS}
    # Batch norm's cost per round: the no-BN epoch over the BN one, seconds apart.
    cost = {
        (p, s, nm): statistics.median(a / b for a, b in zip(r["none"], r[nm]))
        for (p, s), r in cells.items()
        for nm in NORMS
    }
    print(
        json.dumps(
            {
                "machine": machine(),
                "images": images,
                "rounds": epochs,
                "img_s": {f"{p} {s}px": r for (p, s), r in cells.items()},
            },
            indent=2,
        )
    )
    print(
        f"synthetic training img/s, median of {epochs} interleaved rounds; in brackets batch norm's cost, "
        "the median per-round ratio of the no-BN epoch's rate to this one's:"
    )
    print(
        "| precision | size | no batch norm | Keras BatchNormalization | fused BatchNorm (ours) | ours, squeezes only |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for p in precisions:
        for s in sizes:
            bn = [f"{med[(p, s, nm)]:.0f} ({cost[(p, s, nm)]:.2f}x)" for nm in NORMS[1:]]
            print(f"| {p} | {s} px | {med[(p, s, 'none')]:.0f} | " + " | ".join(bn) + " |")
    for s in sizes:
        print(
            f"bf16 over float32 at {s} px (medians, different processes): "
            + ", ".join(f"{nm} {med[('mixed_bfloat16', s, nm)] / med[('float32', s, nm)]:.2f}x" for nm in NORMS)
        )


def _input_only(params, mode: str, n: int, epochs: int) -> dict:
    """Batches of the training stream per second, no model: `input/SIZE` on all cores, `input1/SIZE` on one."""
    import shutil

    from dogs_vs_cats.inputs import train_dataset

    if mode.startswith("input1"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    size = int(mode.split("/")[1])
    prepared = Path("data/prepared")
    prepared.mkdir(parents=True, exist_ok=True)
    shutil.copy(f"train{n}.tfrecord", prepared / "train.tfrecord")
    steps = -(-n // params.train.batch_size)
    stream = iter(train_dataset(params, size))
    for _ in range(steps):  # warm-up: tracing, and the shuffle buffer's first fill
        next(stream)
    t0 = time.monotonic()
    for _ in range(steps * epochs):
        x, _ = next(stream)
    x.numpy()
    rate = steps * epochs * params.train.batch_size / (time.monotonic() - t0)
    return {"images_per_s": round(rate, 1), "size": size, "cores": len(os.sched_getaffinity(0))}


def input_only(images: int, epochs: int) -> None:
    from dogs_vs_cats import params as P

    t = P.load(ROOT / "params.yaml")
    sizes = sorted({s for s in (t.train.low_res_size, t.prepare.image_size) if s})
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        work = Path(tmp)
        child("prepare", work, images, epochs)
        r = {"machine": machine(), "images": images, "epochs": epochs}
        for size in sizes:
            r[f"{size}px"] = {
                "all_cores": child(f"input/{size}", work, images, epochs),
                "one_core": child(f"input1/{size}", work, images, epochs),
            }
    print(json.dumps(r, indent=2))
    for size in sizes:
        a, o = r[f"{size}px"]["all_cores"], r[f"{size}px"]["one_core"]
        print(
            f"input pipeline at {size} px: {a['images_per_s']:.0f} img/s on {a['cores']} cores, "
            f"{o['images_per_s']:.0f} img/s on one core"
        )


def _median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["images_per_s"])[(len(runs) - 1) // 2]


def _rss() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="alternating real/synthetic training measurements")
    ap.add_argument(
        "--rss-images", type=int, default=4000, help="also the peak memory of prepare and train at this many images"
    )
    ap.add_argument(
        "--precision",
        choices=("auto", "float32", "mixed_bfloat16"),
        default=None,
        help="training precision (default: params.yaml's train.precision)",
    )
    ap.add_argument(
        "--grid",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="instead: batch norm's cost, none / Keras' / fused, in float32 and bf16 at these sizes (synthetic)",
    )
    ap.add_argument(
        "--profile",
        type=int,
        metavar="SIZE",
        help="instead: op time per training step at this size, none / Keras' / fused batch norm (synthetic)",
    )
    ap.add_argument("--input-only", action="store_true", help="instead: the training input pipeline alone")
    ap.add_argument("--child")
    ap.add_argument("--dir", type=Path)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: give at least 1 (pairs of real and synthetic measurements)")
    if args.child:
        print(json.dumps(run_child(args.child, args.dir, args.images, args.epochs, args.precision)))
        return 0
    if args.grid:
        grid(args.images, args.epochs, args.grid)
        return 0
    if args.input_only:
        input_only(args.images, args.epochs)
        return 0

    from dogs_vs_cats import params as P

    precision = args.precision or P.load(ROOT / "params.yaml").train.precision
    if args.profile:
        profile(args.images, args.epochs, args.profile, precision)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        work = Path(tmp)
        r = {"machine": machine()}
        r["prepare_all_cores"] = child("prepare", work, args.images, args.epochs)
        r["prepare_one_core"] = child("prepare1", work, args.images, args.epochs)
        at = args.rss_images if args.images != args.rss_images else None  # else measured already
        r[f"prepare_{args.rss_images}_peak_rss_mb"] = child("prepare", work, at, 1)["peak_rss_mb"] if at else None
        reals, synths = [], []
        for i in range(args.repeats):
            reals.append(child("train_real", work, args.images, args.epochs, precision))
            synths.append(child("train_synthetic", work, args.images, args.epochs, precision))
            print(
                f"bench/speed: pair {i + 1}: real {reals[-1]['images_per_s']} vs synthetic "
                f"{synths[-1]['images_per_s']} img/s",
                file=sys.stderr,
                flush=True,
            )
        r["train_real"] = _median_run(reals)
        r["train_synthetic"] = _median_run(synths)
        r[f"train_{args.rss_images}_peak_rss_mb"] = (
            child("train_real", work, at, 1, precision)["peak_rss_mb"] if at else None
        )
        pairs = [a["images_per_s"] / b["images_per_s"] for a, b in zip(reals, synths)]
        r["train_pairs_img_s"] = [[a["images_per_s"], b["images_per_s"]] for a, b in zip(reals, synths)]
        r["ratios"] = {
            "prepare_all_cores_over_one": round(
                r["prepare_all_cores"]["images_per_s"] / r["prepare_one_core"]["images_per_s"], 2
            ),
            "train_real_over_synthetic": round(statistics.median(pairs), 2),
        }
    print(json.dumps(r, indent=2))
    n = args.rss_images
    print(
        f"prepare {r['prepare_all_cores']['images_per_s']:.0f} img/s on all cores "
        f"({r['ratios']['prepare_all_cores_over_one']}x one core) | "
        f"train ({r['train_real']['precision']}) real {r['train_real']['images_per_s']:.0f} "
        f"vs synthetic {r['train_synthetic']['images_per_s']:.0f} img/s "
        f"(ratio {r['ratios']['train_real_over_synthetic']}, median of {len(pairs)}) | "
        f"predict {r['train_synthetic']['predict_batch_images_per_s']:.0f} img/s batched, "
        f"{r['train_synthetic']['predict_single_images_per_s']:.0f} img/s one by one | "
        f"peak RSS prepare {r['prepare_all_cores']['peak_rss_mb']:.0f}/{r[f'prepare_{n}_peak_rss_mb']} MB, "
        f"train {r['train_real']['peak_rss_mb']:.0f}/{r[f'train_{n}_peak_rss_mb']} MB "
        f"({args.images}/{args.rss_images} images)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
