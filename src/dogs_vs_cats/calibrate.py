"""Calibration: one temperature, fitted on validation and folded into the model's last conv.

Log loss, the competition's score, punishes confident mistakes, and a net trained with
label smoothing and weight decay is rarely calibrated. Temperature scaling (Guo et al.,
2017) divides the logits by one number T that minimises validation log loss; it changes
no prediction's class, only its confidence.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .common import P_FLOOR
from .layers import TestTimeViews
from .records import read_records


def p_dog_of_views(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(dog) as the shipped model gives it: softmax(z / T) averaged over the views.

    `view_logits` is (views, images, 2): the logits of every test-time view of each image.
    """
    gap = (view_logits[..., 1] - view_logits[..., 0]) / temperature
    return np.mean(1.0 / (1.0 + np.exp(-gap)), axis=0)


def fit_temperature(view_logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising validation log loss of `p_dog_of_views(view_logits, T)`.

    Searched over log T, where the loss is smooth and nearly convex: Brent's bounded method.
    """
    from scipy.optimize import minimize_scalar

    def nll(log_t):
        p = np.clip(p_dog_of_views(view_logits, np.exp(log_t)), P_FLOOR, 1 - P_FLOOR)
        return -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(best.x))


def view_logits(net, views: TestTimeViews, path: Path, image_size: int):
    """(conv10's pooled logits for every view of every image, (views, images, 2); labels)."""
    head = keras.Model(net.input, net.get_layer("avgpool10").output)
    zs, ys = [], []
    # predict_on_batch runs a compiled graph, which frees each activation once used. Called eagerly,
    # the functional model keeps every layer's output of the batch until the call ends, which at
    # competition sizes exhausted memory (bench/memory.py found it; docs/scaling.md).
    for x, y, _ in read_records(path, image_size).batch(32):
        z = np.asarray(head.predict_on_batch(views(tf.cast(x, tf.float32))), dtype=np.float64)
        zs.append(z.reshape(views.count, -1, z.shape[-1]))
        ys.append(y.numpy())
    return np.concatenate(zs, axis=1), np.concatenate(ys)


def fold_temperature(model: keras.Model, temperature: float) -> None:
    """Bake temperature scaling into conv10, so every copy of the model is calibrated.

    conv10 -> (ReLU) -> average pool is positively homogeneous, so dividing conv10's
    kernel and bias by T divides the logits by T: softmax(z / T), with no extra layer
    and no extra parameter.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    conv = model.get_layer("conv10")
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel / temperature, bias / temperature])
