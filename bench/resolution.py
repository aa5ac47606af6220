#!/usr/bin/env python
"""Test-time probe: score a trained model at other input sizes and test-time centre crops.

SqueezeNet is fully convolutional, so one set of weights runs at any size. Random-resized
crops make objects look larger in training than in whole test photos, which is why testing
somewhat above the training size, or on a zoomed-in centre crop, can pay (Touvron et al.,
2019, "FixRes"). This script measures both on a project that `bench/accuracy.py --keep DIR` left
behind: for each size and `train.tta_crop` it decodes the validation and holdout photos from
the shared train.zip, refits the temperature on validation (never on holdout) and prints
accuracy and log loss with the model's test-time views (mirror per `train.tta`, and the crop).

    .venv/bin/python bench/resolution.py DIR/project 96 112 128 [--tta-crop 0 0.8 0.9]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from benchlib import bench_arguments, overrides, with_overrides  # noqa: E402


def main() -> int:
    ap = bench_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("project", type=Path, help="a project folder holding data/model and data/split")
    ap.add_argument("sizes", type=int, nargs="+")
    ap.add_argument("--tta-crop", type=float, nargs="+", help="train.tta_crop values to try (default: the project's)")
    args = ap.parse_args()

    import keras

    from dogs_vs_cats import params as P
    from dogs_vs_cats.calibrate import fit_temperature, p_dog_of_views
    from dogs_vs_cats.common import scores
    from dogs_vs_cats.images import load_image
    from dogs_vs_cats.layers import TestTimeViews
    from dogs_vs_cats.model import from_params

    t = P.from_dict(with_overrides(P.as_dict(P.load(args.project / "params.yaml")), overrides(args.set))).train
    shipped = keras.models.load_model(args.project / "data/model/model.keras")
    inner = next((layer for layer in shipped.layers if isinstance(layer, keras.Model)), shipped)
    archive = zipfile.ZipFile(args.shared / "train.zip")
    rows = {s: list(csv.DictReader(open(args.project / f"data/split/{s}.csv"))) for s in ("val", "holdout")}
    results = []
    for size in args.sizes:
        net = from_params(t, size)
        net.set_weights(inner.get_weights())
        head = keras.Model(net.input, net.get_layer("avgpool10").output)
        images = {}
        for split, items in rows.items():
            x = np.stack([load_image(archive.read(r["file"]), size) for r in items]).astype("float32")
            images[split] = (x, np.array([int(r["label"]) for r in items]))
        for crop in args.tta_crop or [t.tta_crop]:
            views = TestTimeViews(flip=t.tta, crop=crop)
            logits = {}
            for split, (x, y) in images.items():
                z = head.predict(np.asarray(views(x)), batch_size=100, verbose=0).astype(np.float64)
                logits[split] = (z.reshape(views.count, len(y), -1), y)
            # The shipped conv10 already holds the training-size temperature; this one is on top of it.
            temperature = fit_temperature(*logits["val"])
            row = {"size": size, "tta_crop": crop, "temperature": round(temperature, 3)}
            for split, (z, y) in logits.items():
                scored = scores(p_dog_of_views(z, temperature), y)  # the evaluate stage's own scoring
                row[f"{split}_accuracy"], row[f"{split}_log_loss"] = scored["accuracy"], scored["log_loss"]
            results.append(row)
            print(
                f"{size} px, tta_crop {crop}: "
                f"val accuracy {row['val_accuracy']:.4f}, log loss {row['val_log_loss']:.4f} | "
                f"holdout accuracy {row['holdout_accuracy']:.4f}, log loss {row['holdout_log_loss']:.4f}",
                flush=True,
            )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
