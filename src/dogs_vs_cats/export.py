"""Stage `export`: the trained model as TensorFlow Lite (LiteRT) files for small devices.

Three forms: float32, float16 weights, and full-integer int8 calibrated on prepared
training images. Each is scored on the holdout set by running the .tflite file in the
LiteRT interpreter itself, and timed on single images, so `metrics/export_forms.json`
says what a device would actually get; `metrics/export.json` keeps the int8 form's figures
for `dvc metrics show` and `diff`, without the latencies that change every run.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time

import numpy as np

from .common import atomic_path, log, scores, write_json
from .params import Export, Params
from .paths import EXPORT as OUT
from .paths import EXPORT_METRICS, EXPORT_REPORT, MODEL, prepared
from .predict import Predictor, predict_records
from .records import read_records

FORMS = ("float32", "float16", "int8")


def convert(model, form: str, calibration: np.ndarray, settings: Export) -> bytes:
    """`model` as a .tflite file of `form`, with the stage's `settings` (params.export): no defaults of its own."""
    import tensorflow as tf

    # The converter fixes the batch dimension to 1: what a device runs.
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if form == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif form == "int8":

        def representative():
            for img in calibration:
                yield [img[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Raw pixels in, a float probability out: no quantisation bookkeeping for callers,
        # and log loss is not ruined by 1/256 output steps.
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
        # One scale per output channel (export.per_channel) is the finer quantisation and the larger
        # file; metrics/export.json gives both costs for the shipped setting.
        converter._experimental_disable_per_channel = not settings.per_channel
    # Keras prints the exported graph's every variable signature (hundreds of lines) to stdout while
    # converting; the stage's own log says what is happening.
    with contextlib.redirect_stdout(io.StringIO()):
        return without_names(converter.convert())


def without_names(tflite: bytes) -> bytes:
    """The model without its tensor names and signature: strings no interpreter needs to run it.

    `predict` and `serve` address the one input and output by index, so nothing is lost for
    them; a caller of LiteRT's signature runner would have to use the tensor details instead.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def latency_ms(predictor: Predictor, image: np.ndarray, runs: int) -> float:
    predictor.p_dog_one(image)  # warm-up: first call allocates
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predictor.p_dog_one(image)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 3)


def run(params: Params) -> None:
    import keras

    from . import layers as _custom_objects  # noqa: F401  (registers the saved model's layers)

    model = keras.models.load_model(MODEL, compile=False)
    size = model.input_shape[1]
    n = params.export.calibration_images
    calibration = np.stack([x for x, _, _ in read_records(prepared("train"), size).take(n).as_numpy_iterator()])
    sample = calibration[0]
    runs = params.export.latency_runs
    threads = os.cpu_count() or 1

    keras_predictor = Predictor(MODEL)
    p, y, _ = predict_records(keras_predictor, prepared("holdout"))
    report = {
        "keras": {
            "bytes": MODEL.stat().st_size,
            **_holdout(p, y),
            "latency_ms": {"all_threads": latency_ms(keras_predictor, sample, runs)},
        }
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for form in FORMS:
        log(f"export: converting to {form} TFLite")
        path = OUT / f"model_{form}.tflite"
        with atomic_path(path, suffix=".tflite") as tmp:
            tmp.write_bytes(convert(model, form, calibration, params.export))
        p, y, _ = predict_records(Predictor(path, threads=threads), prepared("holdout"))
        report[form] = {
            "bytes": path.stat().st_size,
            **_holdout(p, y),
            "latency_ms": {
                "one_thread": latency_ms(Predictor(path, threads=1), sample, runs),
                "all_threads": latency_ms(Predictor(path, threads=threads), sample, runs),
            },
        }
        log(
            f"export: {path} {report[form]['bytes'] / 1e6:.2f} MB, holdout accuracy {report[form]['accuracy']}, "
            f"{report[form]['latency_ms']['one_thread']} ms/image on 1 thread"
        )
    int8 = report["int8"]
    report["int8_vs_keras"] = {
        "accuracy_points": round((int8["accuracy"] - report["keras"]["accuracy"]) * 100, 2),
        "speedup_single_image": round(
            report["keras"]["latency_ms"]["all_threads"] / int8["latency_ms"]["all_threads"], 2
        ),
        "size_ratio": round(report["keras"]["bytes"] / int8["bytes"], 2),
    }
    write_json(EXPORT_REPORT, report)
    write_json(EXPORT_METRICS, {"int8": {k: int8[k] for k in ("accuracy", "log_loss", "bytes")}})


def _holdout(p, y) -> dict:
    s = scores(p, y)
    return {"accuracy": s["accuracy"], "log_loss": s["log_loss"]}
