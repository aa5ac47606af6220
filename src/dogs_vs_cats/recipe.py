"""The training recipe: precision, optimiser, learning-rate schedule, loss and metrics.

Kept apart from the architecture (`model.py`), and free of TensorFlow, so the same
recipe compiles on any Keras backend (bench/bf16.py).
"""

from __future__ import annotations

import math

import keras

from .common import BF16_FLAGS, cpu_info


def choose_precision(requested: str) -> str:
    """`auto` picks bf16 where the hardware runs it natively, float32 elsewhere."""
    if requested != "auto":
        return requested
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        return "mixed_bfloat16" if cc >= (8, 0) else "float32"
    return "mixed_bfloat16" if cpu_info()[1] & BF16_FLAGS else "float32"


def schedule(t, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from 0 to `t.learning_rate`, then cosine decay to zero (or a constant rate)."""
    warmup = t.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else t.learning_rate,
        warmup_target=t.learning_rate if warmup else None,
        warmup_steps=warmup,
        decay_steps=max(t.epochs * steps_per_epoch - warmup, 1),
        alpha=0.0 if t.schedule == "cosine" else 1.0,  # alpha 1: the decay keeps the whole rate
    )


def compile_for_training(net: keras.Model, t, steps_per_epoch: int) -> None:
    """Compile `net` with the recipe in `t` (params.train): optimiser, schedule, loss and metrics."""
    lr = schedule(t, steps_per_epoch)
    if t.optimizer == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=t.weight_decay)
    else:
        opt = keras.optimizers.SGD(lr, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay or None)
    net.compile(
        optimizer=opt,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.CategoricalCrossentropy(name="log_loss"),
        ],
    )
    # Every variable exists before fit(): a tf.function that creates variables is traced twice,
    # and tracing the training step is most of a short run's time (metric objects, unlike the
    # string "accuracy", make theirs when constructed).
    opt.build(net.trainable_variables)


# A fresh optimiser moves every weight by about the learning rate in each of its first steps, and
# a net at its optimum does not survive that for long: over a 4-step warm-up (a 500-photo pool)
# the FixMatch student collapsed to one class, where a 63-step one (8,000 photos) was fine.
MIN_WARMUP_STEPS = 60


def warmup_epochs(epochs: int, steps: int) -> int:
    """The warm-up of a net that goes on from trained weights (the student, the distilled edge net): one
    epoch, or as many as make MIN_WARMUP_STEPS, leaving one to decay."""
    return max(0, min(max(1, math.ceil(MIN_WARMUP_STEPS / steps)), epochs - 1))
