"""What runs beside each training epoch: validation, the weight average, the logs and the checkpoint.

Together they make training resumable: a killed run restarts from its last epoch's
checkpoint, average and log, as long as its params and prepared data are unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .common import atomic_path, log, write_csv, write_json
from .params import Params
from .paths import Run, prepared
from .records import read_records

LOG_FIELDS = ["epoch", "accuracy", "loss", "log_loss", "learning_rate", "train_s"]
# The student's share of unlabelled photos past the threshold (consistency.py), and the distilled net's
# share of photos where it picks the ensemble's answer (distillation.py): a column only where logged.
OPTIONAL_FIELDS = ["past_threshold", "agreement"]
# Validated epochs only (train.validation_freq): a file of its own, since DVC's plots draw an
# empty CSV cell as 0, not as a gap.
VAL_FIELDS = ["epoch", "val_accuracy", "val_loss", "val_log_loss"]
# What each epoch logs: Keras' training metrics, and on validated epochs those Validation adds.
KERAS_LOGS = ("accuracy", "loss", "log_loss", "past_threshold", "agreement", "val_accuracy", "val_loss", "val_log_loss")


class Validation:
    """The validation images in memory, scored by the training net with the compiled loss and metrics.

    Not fit()'s `validation_data`: Keras drops the tf.data iterator it made at the end of the
    previous pass and makes another for every pass, and on a small CPU dropping one blocked
    for seconds at some validated epochs (a py-spy profile: `EpochIterator.reset`).
    """

    def __init__(self, params: Params, epochs: list[int]):
        xs, ys = [], []
        for x, y, _ in read_records(prepared("val"), params.prepare.image_size).batch(256):
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
        probs = np.concatenate(
            [
                np.asarray(self._forward(self.x[i : i + self.batch].astype(np.float32)), dtype=np.float32)
                for i in range(0, len(self.y), self.batch)
            ]
        )
        return {
            "val_accuracy": float(np.mean(np.argmax(probs, axis=1) == self.y)),
            "val_loss": float(net.loss(self.onehot, probs)),  # the compiled (label-smoothed) loss
            "val_log_loss": float(self.log_loss(self.onehot, probs)),
        }


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
            np.savez(tmp, *self.weights(), updates=self.updates)

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
    """Time the training steps, validate on the validated epochs, log each epoch atomically, checkpoint for resume.
    `wall_before` is the training time a resumed run had spent before it was stopped."""

    def __init__(
        self,
        run: Run,
        fp: str,
        history: list[dict],
        validation: Validation,
        average: WeightAverage | None,
        wall_before: float = 0.0,
    ):
        super().__init__()
        self.run, self.fp, self.history, self.validation, self.average = run, fp, history, validation, average
        self.train_seconds: list[float] = []
        self.wall_before, self._start = wall_before, time.monotonic()

    def wall_s(self) -> float:
        """Training time so far, across every stop: what a run costs, however often it was resumed."""
        return self.wall_before + time.monotonic() - self._start

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
        write_logs(self.run, self.history)
        state = self.run.state
        state.mkdir(parents=True, exist_ok=True)
        with atomic_path(state / "last.keras", suffix=".keras") as tmp:
            self.model.save(tmp)
        if self.average is not None:
            self.average.save(state / "average.npz")
        write_json(
            state / "state.json",
            {"fingerprint": self.fp, "epoch": epoch + 1, "wall_s": round(self.wall_s(), 1), "history": self.history},
        )


def write_logs(run: Run, history: list[dict]) -> None:
    """The run's epoch log and its validated epochs' log (headers alone for no epochs)."""
    fields = LOG_FIELDS + [k for k in OPTIONAL_FIELDS if any(k in r for r in history)]
    write_csv(run.log, fields, [[r.get(k, "") for k in fields] for r in history])
    write_csv(run.val_log, VAL_FIELDS, [[r[k] for k in VAL_FIELDS] for r in history if "val_accuracy" in r])


def resume(run: Run, fp: str, average: WeightAverage | None):
    """(model, history, training seconds spent) from a matching checkpoint, or (None, [], 0.0); restores
    `average` too. The time spent between the checkpoint and the stop is lost."""
    state_dir, stage = run.state, run.stage
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None, [], 0.0
    if state.get("fingerprint") != fp or not (state_dir / "last.keras").is_file():
        log(f"{stage}: found a checkpoint from other params or data; starting afresh")
        return None, [], 0.0

    try:
        net = keras.models.load_model(state_dir / "last.keras")
    except Exception as exc:  # a damaged checkpoint must not stop training; just start over
        log(f"{stage}: checkpoint unreadable ({exc}); starting afresh")
        return None, [], 0.0
    if average is not None:
        average.set_model(net)
        if not average.load(state_dir / "average.npz"):
            log(f"{stage}: checkpoint has no usable weight average ({state_dir}/average.npz); starting afresh")
            return None, [], 0.0
    log(f"{stage}: resuming after epoch {state['epoch']} from {state_dir}/last.keras")
    return net, state["history"], float(state.get("wall_s", 0.0))
