"""Inference: P(dog) from a saved model, Keras or TFLite, for the stages that score and the commands.

A `.tflite` model needs only a LiteRT interpreter (`ai-edge-litert` or
`tflite-runtime`), never TensorFlow, so this module imports TensorFlow lazily and
only for `.keras` files: a Raspberry Pi can run it with numpy, Pillow and LiteRT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import UserError
from .records import read_records


def _litert():
    """The interpreter module of whichever LiteRT runtime is installed."""
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite"):
        try:
            return __import__(name, fromlist=["Interpreter"])
        except ImportError:
            continue
    return None


def _litert_interpreter(path: str, threads: int | None):
    runtime = _litert()
    if runtime is None:
        raise UserError(f"{path}: a .tflite model needs a LiteRT runtime; pip install ai-edge-litert")
    interp = runtime.Interpreter(model_path=path, num_threads=threads)
    try:
        interp.allocate_tensors()
    except RuntimeError:
        # XNNPACK refuses some quantised graphs (degenerate scales); the built-in kernels run them all.
        resolver = getattr(runtime, "OpResolverType", None) or runtime.experimental.OpResolverType
        interp = runtime.Interpreter(
            model_path=path,
            num_threads=threads,
            experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interp.allocate_tensors()
    return interp


class Predictor:
    """Loads a model file once; `p_dog(batch)` maps uint8 (N, S, S, 3) images to P(dog)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: model file not found; run `dvc repro` or give --model PATH")
        if self.path.stat().st_size == 0:
            raise UserError(f"{self.path}: model file is empty; run `dvc repro train` again")
        self.kind = "tflite" if self.path.suffix == ".tflite" else "keras"
        try:
            if self.kind == "tflite":
                self._init_tflite(threads)
            else:
                self._init_keras()
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                f"{self.path}: cannot load model ({type(exc).__name__}); is it a .keras or .tflite file?"
            ) from None

    def _init_keras(self):
        import keras

        from . import layers as _custom_objects  # noqa: F401  (registers layers used in saved models)

        self._model = keras.models.load_model(self.path, compile=False)
        self.image_size = int(self._model.input_shape[1])
        self.params = int(self._model.count_params())

    def _init_tflite(self, threads):
        self._interp = _litert_interpreter(str(self.path), threads)
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self.image_size = int(self._in["shape"][1])
        self.params = None

    def p_dog(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:  # TensorFlow's oneDNN convolution rejects an empty batch
            return np.zeros(0)
        if self.kind == "keras":
            p = self._model.predict_on_batch(images.astype(np.float32))
            return np.asarray(p, dtype=np.float64)[:, 1]
        out = []
        for img in images:  # TFLite models are exported for batch 1: the edge case
            out.append(self.p_dog_one(img))
        return np.asarray(out, dtype=np.float64)

    def p_dog_one(self, image: np.ndarray) -> float:
        if self.kind == "keras":
            return float(self.p_dog(image[None])[0])
        x = image[None].astype(np.float32)
        scale, zero = self._in.get("quantization", (0.0, 0))
        if self._in["dtype"] != np.float32:
            info = np.iinfo(self._in["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(self._in["dtype"])
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        y = self._interp.get_tensor(self._out["index"])
        scale, zero = self._out.get("quantization", (0.0, 0))
        if self._out["dtype"] != np.float32:
            y = (y.astype(np.float32) - zero) * scale
        return float(y[0, 1])


def predict_records(predictor: Predictor, path: Path, batch_size: int = 64):
    """(P(dog), labels, names) for every image of a prepared TFRecord file (reading it needs TensorFlow)."""
    ps, ys, names = [], [], []
    for x, y, n in read_records(path, predictor.image_size).batch(batch_size).as_numpy_iterator():
        ps.append(predictor.p_dog(x))
        ys.append(y)
        names += [s.decode() for s in n]
    if not ps:
        return np.zeros(0), np.zeros(0, dtype=int), []
    return np.concatenate(ps), np.concatenate(ys), names
