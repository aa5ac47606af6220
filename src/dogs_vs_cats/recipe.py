"""The training recipe: precision, optimiser, learning-rate schedule, loss and metrics.

Kept apart from the architecture (`model.py`), and free of TensorFlow, so the same
recipe compiles on any Keras backend (bench/bf16.py).
"""
from __future__ import annotations

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


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to zero (or a constant `peak`)."""

    def __init__(self, peak, warmup_steps, total_steps, cosine=True):
        self.peak, self.warmup_steps, self.total_steps, self.cosine = peak, warmup_steps, total_steps, cosine

    def __call__(self, step):
        import math

        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup = self.peak * ops.minimum(1.0, (step + 1.0) / warm)
        if not self.cosine:
            return warmup
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        decay = self.peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warmup, decay)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps, cosine=self.cosine)


def compile_for_training(net: keras.Model, t, steps_per_epoch: int) -> None:
    """Compile `net` with the recipe in `t` (params.train): optimiser, warm-up + cosine schedule, loss.

    Kept free of TensorFlow so the recipe runs unchanged on any Keras backend (bench/bf16).
    """
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
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"), keras.metrics.CategoricalCrossentropy(name="log_loss")],
    )
    # Every variable exists before fit(): a tf.function that creates variables is traced twice,
    # and tracing the training step is most of a short run's time (metric objects, unlike the
    # string "accuracy", make theirs when constructed).
    opt.build(net.trainable_variables)
