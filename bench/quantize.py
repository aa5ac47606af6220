#!/usr/bin/env python
"""Quantisation: where an integer file's bytes go, and each way of putting the weights in 4 bits.

Takes a project folder whose `dvc repro` has run (its edge net data/edge/model.keras, prepared train and holdout
photos), converts the model to float32 TFLite as the export stage does, then quantises it with
ai-edge-quantizer in every combination of:
- the range each channel's 4 bits cover: min-max, MSE or OCTAV (clipped to minimise the error);
- activations: int8 (calibrated on `export.calibration_images` training photos; integer
  kernels) or float (weights dequantised at run time);
- the first and last convolutions kept at 8 bits, or not.
Each file is compacted as the export stage compacts its files, then scored on the holdout
photos in LiteRT and timed on one photo (median of 50, one thread). The export stage ships
OCTAV, int8 activations, ends kept; its row is marked.

First it takes the int8 file apart, as the converter writes it and as the export stage ships
it: the weights' bytes, the per-channel scales and zero points, the tensor names, the rest.

    .venv/bin/python bench/quantize.py --project DIR [--algorithms OCTAV MSE min_max_uniform_quantize]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

from benchlib import machine
from dogs_vs_cats.common import scores

ROOT = Path(__file__).resolve().parents[1]

SHIPPED = ("OCTAV", "int8", True)


def anatomy(tflite: bytes) -> dict:
    """Where a .tflite file's bytes go: weights (buffers), quantisation vectors, names, the rest."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    tensors = [t for g in model.subgraphs for t in g.tensors]
    quant = [t.quantization for t in tensors if t.quantization is not None]
    scales = sum(len(q.scale) for q in quant if q.scale is not None)
    zero_points = sum(len(q.zeroPoint) for q in quant if q.zeroPoint is not None)
    parts = {
        "weights": sum(len(b.data) for b in model.buffers if b.data is not None),
        "scales_float32": 4 * scales,
        "zero_points_int64_as_listed": 8 * zero_points,
        "names": sum(len(t.name or b"") for t in tensors),
    }
    return {
        "bytes": len(tflite),
        **parts,
        "zero_points_all_0": all(not any(q.zeroPoint) for q in quant if q.zeroPoint is not None and len(q.scale) > 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="a project folder whose dvc repro has run")
    ap.add_argument("--algorithms", nargs="+", default=["min_max_uniform_quantize", "MSE", "OCTAV"])
    args = ap.parse_args()
    os.chdir(args.project)

    import keras
    import numpy as np

    from dogs_vs_cats import layers as _custom_objects  # noqa: F401  (registers the saved model's layers)
    from dogs_vs_cats import params as P
    from dogs_vs_cats.inference import Predictor, predict_records
    from dogs_vs_cats.paths import EDGE_MODEL as MODEL
    from dogs_vs_cats.paths import prepared
    from dogs_vs_cats.records import read_records
    from dogs_vs_cats.stages.export import compact, converter_output, latency_ms, quantize_int4

    params = P.load(Path("params.yaml"))
    model = keras.models.load_model(MODEL, compile=False)
    size = model.input_shape[1]
    n = params.export.calibration_images
    calibration = np.stack([x for x, _, _ in read_records(prepared("train"), size).take(n).as_numpy_iterator()])
    float_tflite = converter_output(model, "float32", calibration, params.export)
    p, y, _ = predict_records(Predictor(MODEL), prepared("holdout"))
    keras_scores = scores(p, y)
    raw_int8 = converter_output(model, "int8", calibration, params.export)
    files = {"int8 as converted": anatomy(raw_int8), "int8 as shipped": anatomy(compact(raw_int8))}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int4-") as tmp:
        for algorithm, activations, keep_ends in itertools.product(args.algorithms, ("int8", "float"), (True, False)):
            path = Path(tmp) / "model.tflite"
            path.write_bytes(compact(quantize_int4(float_tflite, calibration, algorithm, keep_ends, activations)))
            p, y, _ = predict_records(Predictor(path, threads=1), prepared("holdout"))
            s = scores(p, y)
            rows.append(
                {
                    "algorithm": algorithm,
                    "activations": activations,
                    "ends_at_8_bits": keep_ends,
                    "bytes": path.stat().st_size,
                    "accuracy": s["accuracy"],
                    "log_loss": s["log_loss"],
                    "ms_one_thread": latency_ms(Predictor(path, threads=1), calibration[0], 50),
                    "shipped": (algorithm, activations, keep_ends) == SHIPPED,
                }
            )
            print(f"bench/quantize: {rows[-1]}", file=sys.stderr, flush=True)
    result = {
        "machine": machine(),
        "project": str(args.project),
        "keras": {"accuracy": keras_scores["accuracy"], "log_loss": keras_scores["log_loss"]},
        "int8_anatomy": files,
        "variants": rows,
    }
    print(json.dumps(result, indent=2))
    for name, a in files.items():
        print(
            f"{name}: {a['bytes']:,} bytes, of which weights {a['weights']:,}, scales {a['scales_float32']:,}, "
            f"zero points {a['zero_points_int64_as_listed']:,} as listed, names {a['names']:,}"
        )
    print(f"Keras: holdout {keras_scores['accuracy']:.3f} / {keras_scores['log_loss']:.4f}")
    print("| range | activations | ends at 8 bits | bytes | holdout accuracy | log loss | ms, 1 thread |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mark = " (shipped)" if r["shipped"] else ""
        print(
            f"| {r['algorithm']}{mark} | {r['activations']} | {'yes' if r['ends_at_8_bits'] else 'no'} | "
            f"{r['bytes']:,} | {r['accuracy']:.3f} | {r['log_loss']:.4f} | {r['ms_one_thread']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
