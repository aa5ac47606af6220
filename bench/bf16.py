#!/usr/bin/env python
"""bfloat16 vs float32: train the default recipe both ways, same split and seeds, compare holdout scores.

The speed issue makes `mixed_bfloat16` the default wherever the hardware runs it natively,
on the condition that accuracy does not suffer. This checks that condition for the recipe
itself (architecture, batch norm, optimiser, schedule, label smoothing): for each seed it
trains once per precision and prints holdout accuracy and log loss (the test-time views
of params.yaml, no temperature), then the mean difference against the seed-to-seed spread.

It needs no TensorFlow: photos are decoded with Pillow and augmentation uses Keras'
preprocessing layers, so it runs on any Keras 3 backend, e.g. `KERAS_BACKEND=jax` on a
GPU machine. On a CPU without native bf16 (no AVX512-BF16/AMX), bf16 is emulated and
several times slower than float32.

    python bench/bf16 [--zip ../shared/.../train.zip] [--seeds 3] [--epochs N] [--images N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from benchlib import SHARED_COMPETITION  # noqa: E402

VERBOSE = False
ZIP = SHARED_COMPETITION / "train.zip"


def _decode(job):
    from PIL import Image

    archive, names, size = job
    with zipfile.ZipFile(archive) as zf:
        return np.stack(
            [
                np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB").resize((size, size), Image.BILINEAR))
                for n in names
            ]
        )


def load(archive: Path, items: list[tuple[str, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Photos squashed to `size` square as uint8 (as the prepare stage stores them), and labels."""
    names = [n for n, _ in items]
    chunks = [names[i : i + 100] for i in range(0, len(names), 100)]
    with ProcessPoolExecutor() as pool:
        x = np.concatenate(list(pool.map(_decode, [(archive, c, size) for c in chunks])))
    return x, np.array([y for _, y in items])


def train_once(params, data, policy: str, seed: int) -> dict:
    import keras

    from dogs_vs_cats.common import scores
    from dogs_vs_cats.model import from_params, with_tta
    from dogs_vs_cats.recipe import compile_for_training

    t, a = params.train, params.train.augment
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(seed)
    size = params.prepare.image_size
    (x, y), (xh, yh) = data["train"], data["holdout"]
    # Keras' layers stand in for the train stage's tf.data augmentation: crop ~ zoom-in, the rest alike.
    side = float(np.sqrt(a.crop_scale))
    augment = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            *([keras.layers.RandomFlip("horizontal")] if a.flip else []),
            *([keras.layers.RandomZoom((-(1 - side), 0.0), fill_mode="reflect")] if a.crop_scale < 1 else []),
            *([keras.layers.RandomRotation(a.rotation, fill_mode="reflect")] if a.rotation > 0 else []),
            *([keras.layers.RandomBrightness(a.brightness, value_range=(0, 255))] if a.brightness > 0 else []),
            *([keras.layers.RandomContrast(a.contrast, value_range=(0, 255))] if a.contrast > 0 else []),
        ],
        name="augment",
    )
    net = from_params(t, size)
    model = keras.Sequential([keras.Input((size, size, 3)), augment, net])
    steps = -(-len(x) // t.batch_size)
    compile_for_training(model, t, steps)
    t0 = time.monotonic()
    model.fit(
        x.astype("float32"),
        keras.utils.to_categorical(y, 2),
        batch_size=t.batch_size,
        epochs=t.epochs,
        shuffle=True,
        verbose=2 if VERBOSE else 0,
    )
    wall = time.monotonic() - t0
    # Scored as the train stage ships it: a float32 copy of the weights, whatever the training precision.
    keras.mixed_precision.set_global_policy("float32")
    shipped = from_params(t, size)
    shipped.set_weights(net.get_weights())
    tta = with_tta(shipped, flip=t.tta, crop=t.tta_crop)
    p = np.asarray(tta.predict(xh.astype("float32"), batch_size=256, verbose=0), dtype=np.float64)[:, 1]
    s = scores(p, yh)  # the evaluate stage's own scoring
    return {
        "policy": policy,
        "seed": seed,
        "holdout_accuracy": s["accuracy"],
        "holdout_log_loss": s["log_loss"],
        "train_s": round(wall, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, default=ZIP, help="Kaggle's train.zip")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per precision")
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    ap.add_argument("--images", type=int, help="use only this many training photos (a smoke test)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--verbose", action="store_true", help="print each epoch")
    args = ap.parse_args()
    global VERBOSE
    VERBOSE = args.verbose

    from dogs_vs_cats import params as P
    from dogs_vs_cats.stages.split import labelled_names, make_split

    raw = P.as_dict(P.load(ROOT / "params.yaml"))
    # One size throughout: progressive resizing only saves time, which is not what is compared here.
    raw["train"]["low_res_size"] = 0
    if args.epochs:
        raw["train"]["epochs"] = args.epochs
        raw["train"]["warmup_epochs"] = min(raw["train"]["warmup_epochs"], args.epochs - 1)
    params = P.from_dict(raw)
    by_label, _ = labelled_names(args.zip)
    split = make_split(by_label, params)
    if args.images:
        split["train"] = split["train"][:: max(1, len(split["train"]) // args.images)][: args.images]
    t0 = time.monotonic()
    data = {k: load(args.zip, split[k], params.prepare.image_size) for k in ("train", "holdout")}
    import keras  # after the decoding processes have forked

    print(
        f"bf16: backend {keras.backend.backend()}, {len(data['train'][0])} training / {len(data['holdout'][0])} "
        f"holdout photos at {params.prepare.image_size} px decoded in {time.monotonic() - t0:.0f}s; "
        f"{params.train.epochs} epochs x {args.seeds} seeds x 2 precisions",
        flush=True,
    )

    runs = []
    for seed in range(args.seeds):
        for policy in ("float32", "mixed_bfloat16"):
            runs.append(train_once(params, data, policy, params.train.seed + seed))
            print(json.dumps(runs[-1]), flush=True)

    summary = {}
    for key in ("holdout_accuracy", "holdout_log_loss"):
        f32 = np.array([r[key] for r in runs if r["policy"] == "float32"])
        bf = np.array([r[key] for r in runs if r["policy"] == "mixed_bfloat16"])
        summary[key] = {
            "float32_mean": round(float(f32.mean()), 4),
            "bf16_mean": round(float(bf.mean()), 4),
            "bf16_minus_float32": round(float(bf.mean() - f32.mean()), 4),
            "float32_seed_sd": round(float(f32.std(ddof=1)), 4) if len(f32) > 1 else None,
        }
        print(
            f"{key}: float32 {f32.mean():.4f} (sd {summary[key]['float32_seed_sd']} over seeds), "
            f"bf16 {bf.mean():.4f}, difference {bf.mean() - f32.mean():+.4f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"backend": keras.backend.backend(), "epochs": params.train.epochs, "runs": runs, "summary": summary},
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
