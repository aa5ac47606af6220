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

from .common import BF16_FLAGS, UserError, atomic_path, cpu_info, log, write_csv, write_json
from .params import Params, as_dict
from .model import TestTimeViews, compile_for_training, fold_temperature, from_params, with_tta
from .prepare import OUT as PREPARED, count_records, read_records

MODEL_DIR = Path("data/model")
MODEL = MODEL_DIR / "model.keras"
STATE = Path("data/train_state")
METRICS = Path("metrics/train.json")
LOG = Path("metrics/train_log.csv")
LOG_FIELDS = ["epoch", "accuracy", "loss", "log_loss", "learning_rate", "train_s"]
# Validated epochs only (train.validation_freq): a file of its own, since DVC's plots draw an
# empty CSV cell as 0, not as a gap.
VAL_LOG = Path("metrics/val_log.csv")
VAL_FIELDS = ["epoch", "val_accuracy", "val_loss", "val_log_loss"]
# What each epoch logs: Keras' training metrics, and on validated epochs those Validation adds.
KERAS_LOGS = ("accuracy", "loss", "log_loss", "val_accuracy", "val_loss", "val_log_loss")


def choose_precision(requested: str) -> str:
    """`auto` picks bf16 where the hardware runs it natively, float32 elsewhere."""
    if requested != "auto":
        return requested

    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        return "mixed_bfloat16" if cc >= (8, 0) else "float32"
    return "mixed_bfloat16" if cpu_info()[1] & BF16_FLAGS else "float32"


def choose_strategy(name: str):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError(
                "params.yaml: train.strategy = multi_worker needs the TF_CONFIG environment variable "
                "describing the cluster; set it on every worker, or use train.strategy: mirrored"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def augmenter(params: Params, size: int):
    """Augment a whole batch at once, output `size` square; tf.data runs it while the model trains.

    Random-resized crop, mirror, rotation and the resize to `size` are folded into one affine
    map per image and applied in a single bilinear resampling of the batch. Per-image ops
    (crop, then resize, then rotate) cost three resamplings and thousands of small op calls
    per epoch; at 128 px they no longer kept up with the training step on 2 cores (bench/speed).
    """
    a = params.train.augment
    src = params.prepare.image_size
    geometric = a.crop_scale < 1.0 or a.flip or a.rotation > 0 or size != src

    def affine(n, seeds):
        """Per-image maps from output pixel (x, y) to input pixel, as ImageProjectiveTransformV3 rows."""
        draws = iter(seeds)

        def uniform(lo, hi):
            return tf.random.stateless_uniform([n], next(draws), lo, hi)

        ones = tf.ones([n])
        if a.crop_scale < 1.0:
            # Area fraction and aspect ratio drawn as in Inception's random-resized crop.
            area = uniform(a.crop_scale, 1.0)
            ratio = tf.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
            w = tf.minimum(src * tf.sqrt(area * ratio), float(src))
            h = tf.minimum(src * tf.sqrt(area / ratio), float(src))
            cx = w / 2 + uniform(0.0, 1.0) * (src - w) - 0.5  # pixel centres sit at integer coordinates
            cy = h / 2 + uniform(0.0, 1.0) * (src - h) - 0.5
        else:
            w = h = src * ones
            cx = cy = (src - 1) / 2 * ones
        mirror = tf.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if a.flip else ones
        angle = uniform(-a.rotation, a.rotation) * 2 * math.pi if a.rotation > 0 else tf.zeros([n])
        c, s = tf.cos(angle), tf.sin(angle)
        # Scale the output square onto the crop (mirrored or not), rotate about the crop's centre.
        m = (size - 1) / 2
        a0, a1 = c * w * mirror / size, -s * h / size
        b0, b1 = s * w * mirror / size, c * h / size
        zeros = tf.zeros([n])
        return tf.stack([a0, a1, cx - (a0 + a1) * m, b0, b1, cy - (b0 + b1) * m, zeros, zeros], axis=1)

    def augment(images, labels, seed):
        """`seed` (2 integers) fixes every random draw: tf.data may run batches in any order."""
        x = tf.cast(images, tf.float32)
        n = tf.shape(x)[0]
        # One split serves every draw: six for the affine map, one each for brightness and contrast.
        *geo_seeds, bright_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 8))
        if geometric:
            x = tf.raw_ops.ImageProjectiveTransformV3(
                images=x, transforms=affine(n, geo_seeds), output_shape=[size, size], fill_value=0.0,
                interpolation="BILINEAR", fill_mode="REFLECT",
            )
        if a.brightness > 0:
            x = x + tf.random.stateless_uniform([n, 1, 1, 1], bright_seed, -a.brightness, a.brightness) * 255.0
        if a.contrast > 0:
            mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
            x = (x - mean) * tf.random.stateless_uniform([n, 1, 1, 1], contrast_seed, 1 - a.contrast, 1 + a.contrast) + mean
        return tf.clip_by_value(x, 0.0, 255.0), tf.one_hot(labels, 2)

    return augment


def mixup(alpha: float):
    """mixup (Zhang et al., 2018): blend each image and its label with another's from the batch.

    Each pair gets its own weight from Beta(alpha, alpha), drawn as a ratio of two
    gamma variates since TensorFlow has no Beta sampler.
    """
    def mix(x, y, seed):
        n = tf.shape(x)[0]
        sa, sb, sp = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        a, b = tf.random.stateless_gamma([n], sa, alpha), tf.random.stateless_gamma([n], sb, alpha)
        lam = a / (a + b)
        partner = tf.random.experimental.stateless_shuffle(tf.range(n), sp)
        lx, ly = lam[:, None, None, None], lam[:, None]
        return lx * x + (1 - lx) * tf.gather(x, partner), ly * y + (1 - ly) * tf.gather(y, partner)

    return mix


def train_dataset(params: Params, size: int, shard: tuple[int, int] = (0, 1), batch_size: int | None = None):
    """Shuffled, augmented training batches at `size` px, streamed from the prepared store, epoch after epoch.

    `shard` (i, n) keeps every n-th record from the i-th, in batches of `batch_size`: one worker's
    part of a multi-worker run.
    """
    t = params.train
    index, count = shard
    records = read_records(PREPARED / "train.tfrecord", params.prepare.image_size)
    batches = (
        (records.shard(count, index) if count > 1 else records)
        .map(lambda x, y, name: (x, y))
        .shuffle(t.shuffle_buffer, seed=t.seed, reshuffle_each_iteration=True)
        .batch(batch_size or t.batch_size, drop_remainder=False)
    )
    # One seed pair per batch, from a seeded stream that differs each epoch: the random draws
    # then depend on the batch, not on which of tf.data's parallel calls happens to run first.
    seeds = tf.data.Dataset.random(seed=t.seed + index, rerandomize_each_iteration=True).batch(4)
    augment, mix = augmenter(params, size), mixup(t.augment.mixup) if t.augment.mixup > 0 else None

    def step(batch, seed):
        x, y = augment(*batch, seed[:2])
        return mix(x, y, seed[2:]) if mix else (x, y)

    # Endless, so one iterator serves every epoch (fit() is told the steps per epoch), and prefetch
    # refills the shuffle buffer across the epoch boundary. Given a finite dataset, Keras makes a new
    # iterator at each epoch's start and another at its end, and waits while the buffer refills.
    train = tf.data.Dataset.zip((batches, seeds)).map(step, num_parallel_calls=tf.data.AUTOTUNE).repeat()
    return train.prefetch(tf.data.AUTOTUNE)


class Validation:
    """The validation images in memory, scored by the training net with the compiled loss and metrics.

    Not fit()'s `validation_data`: Keras drops the tf.data iterator it made at the end of the
    previous pass and makes another for every pass, and on this 2-core machine dropping one
    blocked for 5-56 s at some validated epochs (a py-spy profile: `EpochIterator.reset`).
    """
    def __init__(self, params: Params, epochs: list[int]):
        xs, ys = [], []
        for x, y, _ in read_records(PREPARED / "val.tfrecord", params.prepare.image_size).batch(256):
            xs.append(x.numpy())
            ys.append(y.numpy())
        self.x, self.y = np.concatenate(xs), np.concatenate(ys)
        self.epochs, self.batch = set(epochs), max(params.train.batch_size, 64)
        self.onehot = np.eye(2, dtype=np.float32)[self.y]
        self.log_loss = keras.losses.CategoricalCrossentropy()
        self._net = self._forward = None  # the net last scored, and its compiled forward pass

    def __call__(self, net) -> dict:
        # The net itself in a graph, not predict_on_batch: under MultiWorkerMirroredStrategy that
        # runs the batch on every worker and returns all their answers, concatenated.
        if self._net is not net:
            self._net, self._forward = net, tf.function(lambda x: net(x, training=False), reduce_retracing=True)
        probs = np.concatenate([
            np.asarray(self._forward(self.x[i:i + self.batch].astype(np.float32)), dtype=np.float32)
            for i in range(0, len(self.y), self.batch)
        ])
        return {
            "val_accuracy": float(np.mean(np.argmax(probs, axis=1) == self.y)),
            "val_loss": float(net.loss(self.onehot, probs)),  # the compiled (label-smoothed) loss
            "val_log_loss": float(self.log_loss(self.onehot, probs)),
        }


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
    net = from_params(t, size)
    compile_for_training(net, t, steps_per_epoch)
    return net


class WeightAverage(keras.callbacks.Callback):
    """Exponential moving average of every weight, batch-norm statistics included, from epoch `start`.

    Each step moves the average 1 - decay of the way to the current weights, but the n-th update
    (from 0) uses min(decay, n / (n + 1)): until 1 / (1 - decay) steps have passed, the average
    is the plain mean of every weight seen (as in stochastic weight averaging), not a copy of
    the first ones. TF's and timm's (1 + n) / (10 + n) would instead keep only about the last
    tenth of the steps, whatever the decay. Averaging the BN moving statistics along with the kernels keeps the
    two consistent without a recalibration pass. The net trains on its own weights; the
    average is only read at the end.
    """
    def __init__(self, decay: float, start: int):
        super().__init__()
        self.decay, self.start = decay, start
        self.updates, self.shadow = 0, None
        self._active = False

    def set_model(self, model):
        super().set_model(model)
        if self.shadow is None:
            self.shadow = [tf.Variable(tf.cast(w, tf.float32), trainable=False) for w in model.weights]
        pairs = list(zip(self.shadow, model.weights))

        @tf.function  # one graph call per step; a traced function would keep the first model's variables
        def update(decay):
            for s, w in pairs:
                s.assign(decay * s + (1 - decay) * tf.cast(w, tf.float32))

        self._update = update

    def on_epoch_begin(self, epoch, logs=None):
        self._active = epoch + 1 >= self.start  # `epoch` counts from 0, `start` from 1

    def on_train_batch_end(self, batch, logs=None):
        if self._active:
            n = float(self.updates)
            self._update(tf.constant(min(self.decay, n / (n + 1)), tf.float32))
            self.updates += 1

    def weights(self) -> list[np.ndarray]:
        return [s.numpy() for s in self.shadow]

    def save(self, path: Path) -> None:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, updates=self.updates, *self.weights())

    def load(self, path: Path) -> bool:
        """Restore a saved average (resume); False if there is none that fits this model."""
        try:
            with np.load(path) as f:
                values = [f[f"arr_{i}"] for i in range(len(self.shadow))]
                updates = int(f["updates"])
        except (OSError, KeyError, ValueError):
            return False
        if any(v.shape != tuple(s.shape) for v, s in zip(values, self.shadow)):
            return False
        for s, v in zip(self.shadow, values):
            s.assign(v)
        self.updates = updates
        return True


class EpochState(keras.callbacks.Callback):
    """Time the training steps, validate on the validated epochs, log each epoch atomically, checkpoint for resume."""
    def __init__(self, fp: str, history: list[dict], validation: Validation, average: WeightAverage | None):
        super().__init__()
        self.fp, self.history, self.validation, self.average = fp, history, validation, average
        self.train_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.monotonic()

    def _stop_clock(self):
        if hasattr(self, "_t0"):
            self.train_seconds.append(time.monotonic() - self._t0)
            del self._t0

    def on_epoch_end(self, epoch, logs=None):
        self._stop_clock()
        if epoch + 1 in self.validation.epochs and logs is not None:
            logs.update(self.validation(self.model))  # in place, so Keras' progress line shows them too
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, "learning_rate": float(np.asarray(self.model.optimizer.learning_rate))}
        row.update({k: round(float(logs[k]), 5) for k in KERAS_LOGS if k in logs})
        if self.train_seconds:  # seconds of training steps, without validation: shows a noisy host's slow epochs
            row["train_s"] = round(self.train_seconds[-1], 1)
        self.history.append(row)
        write_csv(LOG, LOG_FIELDS, [[r.get(k, "") for k in LOG_FIELDS] for r in self.history])
        write_csv(VAL_LOG, VAL_FIELDS, [[r[k] for k in VAL_FIELDS] for r in self.history if "val_accuracy" in r])
        STATE.mkdir(parents=True, exist_ok=True)
        with atomic_path(STATE / "last.keras", suffix=".keras") as tmp:
            self.model.save(tmp)
        if self.average is not None:
            self.average.save(STATE / "average.npz")
        write_json(STATE / "state.json", {"fingerprint": self.fp, "epoch": epoch + 1, "history": self.history})


def _resume(fp: str, average: WeightAverage | None):
    """(model, history) from a matching checkpoint, or (None, []); restores `average` too."""
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
    if average is not None:
        average.set_model(net)
        if not average.load(STATE / "average.npz"):
            log(f"train: checkpoint has no usable weight average ({STATE}/average.npz); starting afresh")
            return None, []
    log(f"train: resuming after epoch {state['epoch']} from {STATE}/last.keras")
    return net, state["history"]


def fit_replicated(net, strategy, params: Params, size: int, steps: int, epochs: int, initial_epoch: int, callbacks):
    """fit() for MultiWorkerMirroredStrategy, under which Keras 3's own fails (keras-team/keras#20585).

    The same compiled optimizer (so the same learning-rate schedule and weight decay), loss, metrics
    and callbacks. Each worker streams its own shard of the records; `train.batch_size` stays the
    global batch, split evenly over the replicas, so the recipe means the same on any cluster.
    """
    t = params.train
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise UserError(
            f"params.yaml: train.batch_size = {t.batch_size} is invalid for {replicas} replicas: "
            "expected a multiple of the replica count (TF_CONFIG's workers times each one's devices)"
        )
    data = strategy.distribute_datasets_from_function(lambda ctx: train_dataset(
        params, size, (ctx.input_pipeline_id, ctx.num_input_pipelines), ctx.get_per_replica_batch_size(t.batch_size)))

    statistics = [v for v in net.non_trainable_variables if keras.backend.is_float_dtype(v.dtype)]  # not the dropout seed

    def step(x, y):
        with tf.GradientTape() as tape:
            p = tf.cast(net(x, training=True), tf.float32)
            per_image = net.loss.call(y, p)  # the compiled loss (label smoothing and all), per image
            loss = tf.nn.compute_average_loss(per_image)  # over the global batch, as fit() averages over the batch
            if net.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(net.losses))
        net.optimizer.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        # Batch norm's moving statistics: each worker's follow its own images. Averaged every step
        # (a few thousand numbers beside the gradients' 700k), they follow the global batch and are
        # the same on every worker, so every worker's checkpoint and model are the same.
        ctx = tf.distribute.get_replica_context()
        for v, mean in zip(statistics, ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in statistics])):
            v.assign(mean)
        return tf.stack([tf.reduce_sum(per_image), tf.reduce_sum(keras.metrics.categorical_accuracy(y, p)),
                         tf.reduce_sum(keras.losses.categorical_crossentropy(y, p)), tf.cast(tf.shape(y)[0], tf.float32)])

    @tf.function
    def train_step(iterator):
        # Sums over the global batch: loss, correct answers, log loss, images.
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=next(iterator)), axis=None)

    hooks = keras.callbacks.CallbackList(callbacks, model=net)
    iterator = iter(data)
    for epoch in range(initial_epoch, epochs):
        start = time.monotonic()
        hooks.on_epoch_begin(epoch)
        total = tf.zeros(4)
        for batch in range(steps):
            total += train_step(iterator)  # no .numpy() per step: the steps queue up asynchronously
            hooks.on_train_batch_end(batch)
        loss, correct, log_loss, n = total.numpy()
        logs = {"accuracy": correct / n, "log_loss": log_loss / n, "loss": loss / n}
        hooks.on_epoch_end(epoch, logs)
        log(f"Epoch {epoch + 1}/{epochs} - {time.monotonic() - start:.0f}s - "
            + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))


def p_dog_of_views(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(dog) as the shipped model gives it: softmax(z / T) averaged over the views.

    `view_logits` is (views, images, 2): the logits of every test-time view of each image.
    """
    gap = (view_logits[..., 1] - view_logits[..., 0]) / temperature
    return np.mean(1.0 / (1.0 + np.exp(-gap)), axis=0)


def fit_temperature(view_logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising validation log loss of `p_dog_of_views(view_logits, T)`."""
    def nll(t):
        p = np.clip(p_dog_of_views(view_logits, t), 1e-7, 1 - 1e-7)
        return -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    # A 1-D convex-ish problem: a log-spaced grid then a fine one around the best is robust and exact enough.
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 200))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = np.linspace(best / 1.05, best * 1.05, 101)
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def view_logits(net, views: TestTimeViews, path: Path, image_size: int):
    """(conv10's pooled logits for every view of every image, (views, images, 2); labels)."""
    head = keras.Model(net.input, net.get_layer("avgpool10").output)
    zs, ys = [], []
    # predict_on_batch runs a compiled graph, which frees each activation once used. Called eagerly,
    # the functional model keeps every layer's output of the batch until the end: at 227 px, 128
    # images (512 views) at a time grew past 17 GB before the train stage was killed (bench/memory).
    for x, y, _ in read_records(path, image_size).batch(32):
        z = np.asarray(head.predict_on_batch(views(tf.cast(x, tf.float32))), dtype=np.float64)
        zs.append(z.reshape(views.count, -1, z.shape[-1]))
        ys.append(y.numpy())
    return np.concatenate(zs, axis=1), np.concatenate(ys)


def run(params: Params) -> None:

    t = params.train
    keras.utils.set_random_seed(t.seed)
    precision = choose_precision(t.precision)
    keras.mixed_precision.set_global_policy(precision)
    strategy = choose_strategy(t.strategy)
    # Counted from the prepared file itself, so prepare's report (which holds a throughput) is no train input.
    n_train = count_records(PREPARED / "train.tfrecord")
    steps = math.ceil(n_train / t.batch_size)
    fp = fingerprint(params)
    size = params.prepare.image_size
    # (last epoch, training image size) per phase: progressive resizing spends the early epochs on
    # cheaper small images and ends at the size the model is evaluated and shipped at.
    phases = [(t.low_res_epochs, t.low_res_size)] if t.low_res_size else []
    phases.append((t.epochs, size))
    # The average covers the last phase only: weights tuned to the small images would drag it back.
    average = WeightAverage(t.ema, start=phases[-2][0] + 1 if len(phases) > 1 else 1) if t.ema else None
    with strategy.scope():
        net, history = _resume(fp, average)
        if net is None:
            net = build(params, steps)  # a stale average from a refused checkpoint is harmless: update 0 copies
    log(
        f"train: {t.model} ({net.count_params():,} params, batch_norm={t.batch_norm}{'' if t.batch_norm_expand else ' (squeezes only)'}, bypass={t.bypass}) on {n_train} images, "
        f"{t.epochs} epochs ({', '.join(f'to {e} at {s}px' for e, s in phases)}), {precision}, "
        f"strategy {t.strategy} ({strategy.num_replicas_in_sync} replica(s)), validating every {t.validation_freq} epoch(s) and the last"
    )
    # Validation only monitors (nothing is chosen by it), so it runs every validation_freq-th epoch
    # and always after the last, whose figures go to metrics/train.json.
    val_epochs = [e for e in range(1, t.epochs + 1) if e % t.validation_freq == 0 or e == t.epochs]
    callback = EpochState(fp, history, Validation(params, val_epochs), average)
    start = time.monotonic()
    for until, train_size in phases:
        done = len(history)
        if done >= until:
            continue
        callbacks = [callback] if average is None else [average, callback]
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            fit_replicated(net, strategy, params, train_size, steps, until, done, callbacks)
            continue
        net.fit(
            # shuffle=False: the stream shuffles itself, seeded; Keras' default would only warn that it is ignored.
            train_dataset(params, train_size), steps_per_epoch=steps, epochs=until, initial_epoch=done, shuffle=False,
            callbacks=callbacks, verbose=1 if sys.stderr.isatty() else 2,
        )
    wall = time.monotonic() - start

    # The shipped model is float32 whatever the training precision: it must run anywhere.
    keras.mixed_precision.set_global_policy("float32")
    final = from_params(t, params.prepare.image_size)
    final.set_weights(net.get_weights() if average is None else average.weights())
    views = TestTimeViews(t.tta, t.tta_crop)
    temperature = fit_temperature(*view_logits(final, views, PREPARED / "val.tfrecord", params.prepare.image_size))
    fold_temperature(final, temperature)
    shipped = with_tta(final, t.tta, t.tta_crop)
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
