"""How a SqueezeNet is trained, for both stages that train one: `train` (the teacher, on the
labelled photos) and `student` (on the labelled and the test photos, when `unlabelled` is on), once
per ensemble member.

    phases      -> the epochs of each image size (progressive resizing)
    fit         -> train them, validating, logging and checkpointing every epoch (callbacks.py)
    calibrate   -> fit a temperature on validation and fold it into the net (calibrate.py)
    ship        -> save the float32 net, with its test-time views, where the run's stage writes it
    report      -> the run's metrics file (the curves are drawn by `evaluate`, so a picture's edit
                   re-runs no training)

The architecture is in model.py, the optimiser recipe in recipe.py, the input stream in
inputs.py and the multi-worker loop in distributed.py. A run that is killed resumes from
its last epoch, as long as the params and the training data are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys

import keras
import tensorflow as tf

from .calibrate import fit_temperature, fold_temperature, view_logits
from .callbacks import EpochState, Validation, WeightAverage, resume
from .common import atomic_path, log, write_json
from .distributed import choose_strategy, fit_replicated
from .inputs import train_dataset
from .layers import TestTimeViews
from .model import from_params, with_tta
from .params import Params, as_dict
from .paths import Run, prepared
from .recipe import choose_precision, compile_for_training
from .records import count_records


class Supervised:
    """How the teacher learns (a learner for `train`): the labelled photos of `run.source`, the compiled loss.

    A learner says what a run reads besides validation (`inputs`) and which params sections shape
    it (`sections`: both make the resume fingerprint), how many images make an
    epoch, how its net is built and what stream feeds it; consistency.py has the student's.
    """

    def __init__(self, run: Run):
        self.run, self.inputs, self.sections = run, (run.source,), ("train", "prepare")

    def images(self, params: Params) -> int:
        # Counted from the prepared file itself, so prepare's report (which holds a throughput) is no train input.
        return count_records(self.run.source)

    def steps(self, params: Params) -> int:
        return math.ceil(self.images(params) / params.train.batch_size)

    def build(self, params: Params, steps: int):
        return build(params, steps)

    def stream(self, params: Params, size: int):
        return train_dataset(params, size, source=self.run.source)


def fingerprint(params: Params, learner) -> str:
    """What a checkpoint must match to be resumed: the learner's params, the member's seed and every file
    it learns from."""
    h = hashlib.sha256()
    sections = [as_dict(getattr(params, s)) for s in learner.sections]
    h.update(json.dumps([*sections, params.train.seed], sort_keys=True).encode())
    for path in (*learner.inputs, prepared("val")):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def build(params: Params, steps_per_epoch: int):
    """The compiled training net. Progressive resizing feeds two image sizes; the net is fully
    convolutional, so one set of weights takes both."""
    t = params.train
    net = from_params(t, None if t.low_res_size else params.prepare.image_size)
    compile_for_training(net, t, steps_per_epoch)
    return net


def phases(params: Params) -> list[tuple[int, int]]:
    """(last epoch, training image size) per phase: the early epochs on cheaper small images,
    the last at the size the model is evaluated and shipped at."""
    t = params.train
    low = [(t.low_res_epochs, t.low_res_size)] if t.low_res_size else []
    return low + [(t.epochs, params.prepare.image_size)]


def fit(params: Params, run: Run, learner, net, strategy, steps: int, history: list, callbacks: list) -> None:
    """Train every phase not yet done (a resumed run skips what its checkpoint holds)."""
    for until, size in phases(params):
        done = len(history)
        if done >= until:
            continue
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            fit_replicated(net, strategy, params, size, steps, until, done, callbacks, run.source)
            continue
        net.fit(
            # shuffle=False: the stream shuffles itself, seeded; Keras' default would only warn that it is ignored.
            learner.stream(params, size),
            steps_per_epoch=steps,
            epochs=until,
            initial_epoch=done,
            shuffle=False,
            callbacks=callbacks,
            verbose=1 if sys.stderr.isatty() else 2,
        )


def calibrated(params: Params, weights: list) -> tuple[keras.Model, float]:
    """The float32 net with `weights`, its temperature fitted on validation and folded in."""
    t = params.train
    size = params.prepare.image_size
    # The shipped model is float32 whatever the training precision: it must run anywhere.
    keras.mixed_precision.set_global_policy("float32")
    net = from_params(t, size)
    net.set_weights(weights)
    temperature = fit_temperature(*view_logits(net, TestTimeViews(flip=t.tta, crop=t.tta_crop), prepared("val"), size))
    fold_temperature(net, temperature)
    return net, temperature


def ship(params: Params, net: keras.Model, path) -> None:
    """Save the net with its test-time views inside, atomically, where dvc.yaml expects it."""
    shipped = with_tta(net, flip=params.train.tta, crop=params.train.tta_crop)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".keras") as tmp:
        shipped.save(tmp)


def train(params: Params, run: Run, callbacks: tuple = (), extra: dict | None = None, learner=None) -> list[dict]:
    """Train, calibrate and ship one model as `run` says, the `learner`'s way (Supervised by default).
    `callbacks` are extra Keras callbacks for every epoch (hooks for benchmarks); `extra` goes into
    the run's metrics file. Returns the epoch log."""
    t = params.train
    keras.utils.set_random_seed(t.seed)
    precision = choose_precision(t.precision)
    keras.mixed_precision.set_global_policy(precision)
    strategy = choose_strategy(t.strategy)
    learner = learner or Supervised(run)
    n_train = learner.images(params)
    steps = learner.steps(params)
    fp = fingerprint(params, learner)
    plan = phases(params)
    # The average covers the last phase only: weights tuned to the small images would drag it back.
    average = WeightAverage(t.ema, start=plan[-2][0] + 1 if len(plan) > 1 else 1) if t.ema else None
    with strategy.scope():
        net, history, wall_before = resume(run, fp, average)
        if net is None:
            net = learner.build(params, steps)  # a stale average from a refused checkpoint is harmless: update 0 copies
        if hasattr(learner, "attach"):  # what a learner needs beside the net, built or resumed (distillation.py)
            learner.attach(net, params)
    log(
        f"{run.stage}: {t.model} ({net.count_params():,} params, batch_norm={t.batch_norm}"
        f"{'' if t.batch_norm_expand else ' (squeezes only)'}, bypass={t.bypass}) on {n_train} images, "
        f"{t.epochs} epochs ({', '.join(f'to {e} at {s}px' for e, s in plan)}), {precision}, "
        f"strategy {t.strategy} ({strategy.num_replicas_in_sync} replica(s)), "
        f"validating every {t.validation_freq} epoch(s) and the last"
    )
    # Validation only monitors training (no epoch is chosen by it), so it runs every validation_freq-th epoch
    # and always after the last, whose figures go to the run's metrics file.
    val_epochs = [e for e in range(1, t.epochs + 1) if e % t.validation_freq == 0 or e == t.epochs]
    epoch_state = EpochState(run, fp, history, Validation(params, val_epochs), average, wall_before)
    fit(params, run, learner, net, strategy, steps, history, [*([average] if average else []), epoch_state, *callbacks])
    wall = epoch_state.wall_s()

    final, temperature = calibrated(params, net.get_weights() if average is None else average.weights())
    ship(params, final, run.model)
    last = history[-1] if history else {}
    secs = sorted(epoch_state.train_seconds[1:] or epoch_state.train_seconds)
    write_json(
        run.metrics,
        {
            **(extra or {}),
            "model": t.model,
            "params": int(final.count_params()),
            "model_bytes": run.model.stat().st_size,
            "precision": precision,
            "epochs": len(history),
            "accuracy": last.get("accuracy"),
            "val_accuracy": last.get("val_accuracy"),
            "val_log_loss": last.get("val_log_loss"),
            **({"past_threshold": last["past_threshold"]} if "past_threshold" in last else {}),
            "temperature": round(temperature, 4),
            "train_images_per_s": round(n_train / secs[len(secs) // 2], 1) if secs else None,
            "wall_s": round(wall, 1),
        },
    )
    shutil.rmtree(run.state, ignore_errors=True)
    log(f"{run.stage}: done in {wall:.0f}s; temperature {temperature:.3f}; model in {run.model}")
    return history
