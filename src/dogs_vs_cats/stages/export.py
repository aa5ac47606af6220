"""Stage `export`: the edge net (one SqueezeNet: with several ensemble members, the one with the lowest
validation log loss) as TensorFlow Lite (LiteRT) files for small devices.

Four forms: float32, float16 weights, full-integer int8 calibrated on prepared training
images, and int4: 4-bit convolution weights with int8 activations (ai-edge-quantizer). Each
is scored on the holdout set by running the .tflite file in the LiteRT interpreter itself,
and timed on single images, so `metrics/export_forms.json` says what a device would actually
get; `metrics/int8.json` and `metrics/int4.json` keep the integer forms' figures for
`dvc metrics show` and `diff`, without the latencies that change every run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import statistics
import time

import numpy as np

from ..common import atomic_path, log, scores, write_json
from ..inference import Predictor, predict_records
from ..params import Export, Params
from ..paths import EDGE_MODEL as MODEL
from ..paths import EXPORT as OUT
from ..paths import EXPORT_REPORT, FORM_METRICS, prepared
from ..records import read_records

FORMS = ("float32", "float16", "int8", "int4")


def convert(model, form: str, calibration: np.ndarray, settings: Export) -> bytes:
    """`model` as a .tflite file of `form`, with the stage's `settings` (params.export): no defaults of its own."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: expected one of {', '.join(FORMS)}")
    if form == "int4":  # ai-edge-quantizer reads the converter's float file, names and signature included
        float_tflite = converter_output(model, "float32", calibration, settings)
        return compact(quantize_int4(float_tflite, calibration, "OCTAV", keep_ends=True, activations="int8"))
    return compact(converter_output(model, form, calibration, settings))


def converter_output(model, form: str, calibration: np.ndarray, settings: Export) -> bytes:
    """The TensorFlow Lite converter's own file for float32, float16 or int8, before `compact`."""
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
        # file; metrics/int8.json gives both costs for the shipped setting.
        converter._experimental_disable_per_channel = not settings.per_channel
    # Keras prints the exported graph's every variable signature (hundreds of lines) to stdout while
    # converting; the stage's own log says what is happening.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def quantize_int4(
    float_tflite: bytes, calibration: np.ndarray, algorithm: str, keep_ends: bool, activations: str
) -> bytes:
    """4-bit convolution weights, one scale per output channel (ai-edge-quantizer).

    `algorithm` picks each channel's range: "OCTAV" clips it to minimise the rounding error,
    where "min_max_uniform_quantize" spends most of sixteen levels on rare outliers.
    `keep_ends` leaves the first and last convolutions at 8 bits: they hold a fraction of a
    percent of the weights. `activations` "int8" calibrates them on `calibration` and runs
    integer kernels; "float" keeps float activations and dequantises the weights.
    bench/quantize.py measures each choice; `convert` ships OCTAV, ends kept, int8 activations.
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    if activations not in ("int8", "float"):
        raise ValueError(f"activations {activations!r}: expected 'int8' or 'float'")
    interpreter = Interpreter(model_content=float_tflite)
    convs = [
        interpreter._get_tensor_details(op["outputs"][0], 0)["name"]
        for op in interpreter._get_ops_details()
        if op["op_name"] == "CONV_2D"
    ]
    ((signature, io_names),) = interpreter.get_signature_list().items()
    qt = quantizer.Quantizer(float_tflite)

    def add(regex, op, bits):
        if activations == "int8":
            qt.add_static_config(regex, op, activation_num_bits=8, weight_num_bits=bits, algorithm_key=algorithm)
        else:
            qt.add_weight_only_config(regex, op, num_bits=bits, algorithm_key=algorithm)

    if activations == "int8":
        add(".*", "*", 8)  # every other op in int8 too: integer arithmetic from input to output
    add(".*", "CONV_2D", 4)
    for name in (convs[0], convs[-1]) if keep_ends else ():
        add(re.escape(name), "CONV_2D", 8)
    samples = [{io_names["inputs"][0]: img[None].astype(np.float32)} for img in calibration]
    # The quantizer reports progress bars and sizes of its own; the stage's log says what is happening.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ranges = qt.calibrate({signature: samples}, num_threads=os.cpu_count() or 1) if qt.need_calibration else None
        result = qt.quantize(ranges)
    return bytes(result.quantized_model)


def compact(tflite: bytes) -> bytes:
    """The model with nothing an interpreter does not need, and nothing stored twice.

    Tensor names and the signature go (`predict` and `serve` address the one input and output
    by index; a caller of LiteRT's signature runner would use the tensor details instead).
    Buffers stored after the flatbuffer (as ai-edge-quantizer writes them) move inside it. And
    each distinct quantisation vector is written once and shared: LiteRT wants one zero point
    per channel scale, all of them 0 for int8 weights, and a flatbuffer may point many tables
    at one vector.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    shared = _shared_quantization_class()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    for buffer in model.buffers:
        if buffer.offset > 1:  # external data: offset and size into the file
            buffer.data = np.frombuffer(tflite[buffer.offset : buffer.offset + buffer.size], np.uint8)
            buffer.offset = buffer.size = 0
    flatbuffer_utils.strip_strings(model)
    written = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if tensor.quantization is not None:
                tensor.quantization = shared(tensor.quantization, written)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@functools.cache
def _shared_quantization_class():
    from tensorflow.lite.python import schema_py_generated as schema

    class SharedQuantization(schema.QuantizationParametersT):
        """Packs like its parent, but writes each distinct vector once per file (`written`: content -> offset)."""

        def __init__(self, source, written: dict):
            self.__dict__.update(source.__dict__)
            self._written = written

        def _vector(self, builder, values, dtype):
            if values is None:
                return None
            array = np.asarray(values, dtype=dtype)
            key = (array.dtype.str, array.tobytes())
            if key not in self._written:
                self._written[key] = builder.CreateNumpyVector(array)
            return self._written[key]

        def Pack(self, builder):  # noqa: N802  (the flatbuffers object API's name)
            if self.details is not None:
                raise ValueError("custom quantisation details are not supported")
            vectors = [
                (schema.QuantizationParametersAddMin, self._vector(builder, self.min, np.float32)),
                (schema.QuantizationParametersAddMax, self._vector(builder, self.max, np.float32)),
                (schema.QuantizationParametersAddScale, self._vector(builder, self.scale, np.float32)),
                (schema.QuantizationParametersAddZeroPoint, self._vector(builder, self.zeroPoint, np.int64)),
            ]
            schema.QuantizationParametersStart(builder)
            for add, offset in vectors:
                if offset is not None:
                    add(builder, offset)
            schema.QuantizationParametersAddDetailsType(builder, self.detailsType)
            schema.QuantizationParametersAddQuantizedDimension(builder, self.quantizedDimension)
            return schema.QuantizationParametersEnd(builder)

    return SharedQuantization


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

    from .. import layers as _custom_objects  # noqa: F401  (registers the saved model's layers)

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
    for form, path in FORM_METRICS.items():
        write_json(path, {k: report[form][k] for k in ("accuracy", "log_loss", "bytes")})


def _holdout(p, y) -> dict:
    s = scores(p, y)
    return {"accuracy": s["accuracy"], "log_loss": s["log_loss"]}
