"""Stage `train`: SqueezeNet from scratch on the prepared training images.

The run checkpoints every epoch into `data/train_state/` (outside DVC's outputs, so
DVC does not delete it before a re-run). A run that is killed resumes from its last
epoch, as long as the params and the prepared data are unchanged.

After training, a temperature is fitted on the validation set and folded into the
model's last conv, so probabilities are calibrated everywhere the model goes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .common import UserError, atomic_path, log, write_csv, write_json
from .params import Params, as_dict
from .model import WarmupCosine, fold_temperature, squeezenet, with_flip_tta
from .prepare import OUT as PREPARED, read_records

MODEL_DIR = Path("data/model")
MODEL = MODEL_DIR / "model.keras"
STATE = Path("data/train_state")
METRICS = Path("metrics/train.json")
LOG = Path("metrics/train_log.csv")
LOG_FIELDS = ["epoch", "accuracy", "loss", "log_loss", "val_accuracy", "val_loss", "val_log_loss", "learning_rate"]


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(requested: str) -> str:
    """`auto` picks bf16 where the hardware runs it natively, float32 elsewhere."""
    if requested != "auto":
        return requested

    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        return "mixed_bfloat16" if cc >= (8, 0) else "float32"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def choose_strategy(name: str):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError(
                "params.yaml: train.strategy = multi_worker needs the TF_CONFIG environment variable "
                "describing the cluster; set it on every worker, or use train.strategy: mirrored"
            )
        # Measured with two workers on localhost: Keras 3's fit() fails under this strategy, first on
        # PerReplica batches, then on reducing scalar metrics along axis 0 (keras-team/keras#20585).
        # Stop before the cluster spins up rather than crash inside fit().
        raise UserError(
            f"params.yaml: train.strategy = multi_worker does not work with Keras {keras.__version__}'s fit() "
            "(keras-team/keras#20585); train on one machine's GPUs with train.strategy: mirrored"
        )
    return tf.distribute.get_strategy()


def augmenter(params: Params, size: int):
    """A per-image augmentation function for tf.data (it runs while the model trains), output `size` square."""
    a = params.train.augment

    def augment(image, label):
        x = tf.cast(image, tf.float32)
        if a.crop_scale < 1.0:
            begin, crop, _ = tf.image.sample_distorted_bounding_box(
                tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), min_object_covered=0.0,
                area_range=(a.crop_scale, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                use_image_if_no_bounding_boxes=True,
            )
            x = tf.image.resize(tf.slice(x, begin, crop)[None], (size, size))[0]
        elif size != params.prepare.image_size:
            x = tf.image.resize(x[None], (size, size))[0]
        if a.flip:
            x = tf.image.random_flip_left_right(x)
        if a.rotation > 0:
            # Small rotations as an affine warp; tf.raw_ops keeps this free of extra dependencies.
            angle = tf.random.uniform([], -a.rotation, a.rotation) * 2 * math.pi
            c, s = tf.cos(angle), tf.sin(angle)
            cx = cy = (size - 1) / 2
            transform = [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0]
            x = tf.raw_ops.ImageProjectiveTransformV3(
                images=x[None], transforms=tf.cast(tf.stack(transform)[None], tf.float32),
                output_shape=[size, size], fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
            )[0]
        if a.brightness > 0:
            x = x + tf.random.uniform([], -a.brightness, a.brightness) * 255.0
        if a.contrast > 0:
            x = tf.image.random_contrast(x, 1 - a.contrast, 1 + a.contrast)
        return tf.clip_by_value(x, 0.0, 255.0), tf.one_hot(label, 2)

    return augment


def mixup(alpha: float):
    """mixup (Zhang et al., 2018): blend each image and its label with another's from the batch.

    Each pair gets its own weight from Beta(alpha, alpha), drawn as a ratio of two
    gamma variates since TensorFlow has no Beta sampler.
    """
    def mix(x, y):
        n = tf.shape(x)[0]
        a, b = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
        lam = a / (a + b)
        partner = tf.random.shuffle(tf.range(n))
        lx, ly = lam[:, None, None, None], lam[:, None]
        return lx * x + (1 - lx) * tf.gather(x, partner), ly * y + (1 - ly) * tf.gather(y, partner)

    return mix


def datasets(params: Params, train_size: int):
    """(training batches at `train_size`, validation batches at the prepared size)."""
    t = params.train
    size = params.prepare.image_size
    train = (
        read_records(PREPARED / "train.tfrecord", size)
        .map(lambda x, y, name: (x, y))
        .shuffle(t.shuffle_buffer, seed=t.seed, reshuffle_each_iteration=True)
        .map(augmenter(params, train_size), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(t.batch_size, drop_remainder=False)
    )
    if t.augment.mixup > 0:
        train = train.map(mixup(t.augment.mixup), num_parallel_calls=tf.data.AUTOTUNE)
    train = train.prefetch(tf.data.AUTOTUNE)
    val = (
        read_records(PREPARED / "val.tfrecord", size)
        .map(lambda x, y, name: (tf.cast(x, tf.float32), tf.one_hot(y, 2)))
        .batch(max(t.batch_size, 64))
        .cache()
        .prefetch(tf.data.AUTOTUNE)
    )
    return train, val


def fingerprint(params: Params) -> str:
    """What a checkpoint must match to be resumed: train/prepare params and the training data."""
    h = hashlib.sha256()
    h.update(json.dumps([as_dict(params.train), as_dict(params.prepare)], sort_keys=True).encode())
    for name in ("train.tfrecord", "val.tfrecord"):
        with open(PREPARED / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def build(params: Params, steps_per_epoch: int):

    t = params.train
    # Progressive resizing feeds two image sizes; the net is fully convolutional, so one set of weights takes both.
    size = None if t.low_res_size else params.prepare.image_size
    net = squeezenet(t.model, size, 2, t.batch_norm, t.dropout, t.classifier_relu)
    schedule = WarmupCosine(
        t.learning_rate, t.warmup_epochs * steps_per_epoch, t.epochs * steps_per_epoch, t.schedule == "cosine"
    )
    if t.optimizer == "adamw":
        opt = keras.optimizers.AdamW(schedule, weight_decay=t.weight_decay)
    else:
        opt = keras.optimizers.SGD(schedule, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay or None)
    net.compile(
        optimizer=opt,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=["accuracy", keras.metrics.CategoricalCrossentropy(name="log_loss")],
    )
    return net


class EpochState(keras.callbacks.Callback):
    """Log each epoch atomically, checkpoint for resume, and time the training steps."""
    def __init__(self, fp: str, history: list[dict]):
        super().__init__()
        self.fp, self.history = fp, history
        self.train_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.monotonic()

    def on_test_begin(self, logs=None):
        # Validation follows the last training step: stop the throughput clock here.
        if hasattr(self, "_t0"):
            self.train_seconds.append(time.monotonic() - self._t0)
            del self._t0

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, "learning_rate": float(np.asarray(self.model.optimizer.learning_rate))}
        row.update({k: round(float(logs[k]), 5) for k in LOG_FIELDS[1:-1] if k in logs})
        self.history.append(row)
        write_csv(LOG, LOG_FIELDS, [[r.get(k, "") for k in LOG_FIELDS] for r in self.history])
        STATE.mkdir(parents=True, exist_ok=True)
        with atomic_path(STATE / "last.keras", suffix=".keras") as tmp:
            self.model.save(tmp)
        write_json(STATE / "state.json", {"fingerprint": self.fp, "epoch": epoch + 1, "history": self.history})


def _resume(fp: str):
    """(model, history) from a matching checkpoint, or (None, [])."""
    try:
        state = json.loads((STATE / "state.json").read_text())
    except (OSError, ValueError):
        return None, []
    if state.get("fingerprint") != fp or not (STATE / "last.keras").is_file():
        log("train: found a checkpoint from other params or data; starting afresh")
        return None, []

    try:
        net = keras.models.load_model(STATE / "last.keras")
    except Exception as exc:  # a damaged checkpoint must not stop training; just start over
        log(f"train: checkpoint unreadable ({exc}); starting afresh")
        return None, []
    log(f"train: resuming after epoch {state['epoch']} from {STATE}/last.keras")
    return net, state["history"]


def fit_temperature(logits: np.ndarray, labels: np.ndarray, flip_logits: np.ndarray | None) -> float:
    """The T minimising validation log loss of softmax(z / T) (averaged over flips when given)."""
    def nll(t):
        def p_dog(z):
            z = z / t
            return 1.0 / (1.0 + np.exp(-(z[:, 1] - z[:, 0])))

        p = p_dog(logits) if flip_logits is None else (p_dog(logits) + p_dog(flip_logits)) / 2
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    # A 1-D convex-ish problem: a log-spaced grid then a fine one around the best is robust and exact enough.
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 200))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = np.linspace(best / 1.05, best * 1.05, 101)
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def _logits(net, params: Params):
    """conv10 pooled logits (pre-softmax) for val images and their mirror images."""
    head = keras.Model(net.input, net.get_layer("avgpool10").output)
    ds = read_records(PREPARED / "val.tfrecord", params.prepare.image_size).batch(128)
    zs, zfs, ys = [], [], []
    for x, y, _ in ds:
        x = tf.cast(x, tf.float32)
        zs.append(np.asarray(head(x, training=False), dtype=np.float64))
        zfs.append(np.asarray(head(tf.reverse(x, axis=[2]), training=False), dtype=np.float64))
        ys.append(y.numpy())
    return np.concatenate(zs), np.concatenate(zfs), np.concatenate(ys)


def run(params: Params) -> None:

    t = params.train
    keras.utils.set_random_seed(t.seed)
    precision = choose_precision(t.precision)
    keras.mixed_precision.set_global_policy(precision)
    strategy = choose_strategy(t.strategy)
    n_train = json.loads(Path("metrics/prepare.json").read_text())["images"]["train"]
    steps = math.ceil(n_train / t.batch_size)
    fp = fingerprint(params)
    with strategy.scope():
        net, history = _resume(fp)
        if net is None:
            net = build(params, steps)
    size = params.prepare.image_size
    # (last epoch, training image size) per phase: progressive resizing spends the early epochs on
    # cheaper small images and ends at the size the model is evaluated and shipped at.
    phases = [(t.low_res_epochs, t.low_res_size)] if t.low_res_size else []
    phases.append((t.epochs, size))
    log(
        f"train: {t.model} ({net.count_params():,} params, batch_norm={t.batch_norm}) on {n_train} images, "
        f"{t.epochs} epochs ({', '.join(f'to {e} at {s}px' for e, s in phases)}), {precision}, "
        f"strategy {t.strategy} ({strategy.num_replicas_in_sync} replica(s))"
    )
    callback = EpochState(fp, history)
    start = time.monotonic()
    for until, train_size in phases:
        done = len(history)
        if done >= until:
            continue
        train_ds, val_ds = datasets(params, train_size)
        net.fit(
            train_ds, validation_data=val_ds, epochs=until, initial_epoch=done,
            callbacks=[callback], verbose=1 if sys.stderr.isatty() else 2,
        )
    wall = time.monotonic() - start

    # The shipped model is float32 whatever the training precision: it must run anywhere.
    keras.mixed_precision.set_global_policy("float32")
    final = squeezenet(t.model, params.prepare.image_size, 2, t.batch_norm, t.dropout, t.classifier_relu)
    final.set_weights(net.get_weights())
    z, zf, y = _logits(final, params)
    temperature = fit_temperature(z, y, zf if t.tta else None)
    fold_temperature(final, temperature)
    shipped = with_flip_tta(final) if t.tta else final
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    with atomic_path(MODEL, suffix=".keras") as tmp:
        shipped.save(tmp)

    last = history[-1] if history else {}
    secs = sorted(callback.train_seconds[1:] or callback.train_seconds)
    write_json(METRICS, {
        "model": t.model,
        "params": int(final.count_params()),
        "precision": precision,
        "epochs": len(history),
        "accuracy": last.get("accuracy"),
        "val_accuracy": last.get("val_accuracy"),
        "val_log_loss": last.get("val_log_loss"),
        "temperature": round(temperature, 4),
        "train_images_per_s": round(n_train / secs[len(secs) // 2], 1) if secs else None,
        "wall_s": round(wall, 1),
    })
    shutil.rmtree(STATE, ignore_errors=True)
    log(f"train: done in {wall:.0f}s; temperature {temperature:.3f}; model in {MODEL}")
