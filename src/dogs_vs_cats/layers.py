"""The model's own Keras layers: batch norm through TensorFlow's fused kernel, and test-time views.

Registered with Keras, so a saved model loads wherever this module is imported; `predict`
imports it for `.keras` files.
"""

from __future__ import annotations

import functools

import keras
from keras import layers

from .common import P_FLOOR


@functools.cache
def fused_batch_norm_wanted() -> bool:
    """TensorFlow on a CPU-only machine: where it was measured. On GPUs Keras' path stays (not tested there)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class BatchNorm(layers.BatchNormalization):
    """Keras' BatchNormalization, trained through TensorFlow's fused kernel.

    Keras 3 upcasts bf16 activations to float32 and normalises them with half a dozen
    separate element-wise ops, each a full pass over memory; on a small CPU that cost most
    of bf16's gain (docs/performance.md). FusedBatchNormV3 (oneDNN) takes bf16 input directly
    and normalises in one pass, accumulating in float32. Same weights, same maths:
    outputs, gradients and moving statistics match Keras' layer (tests/test_model.py).
    Inference, GPUs, other backends and masked inputs take Keras' own path.
    """

    def call(self, inputs, training=None, mask=None):
        fusable = (
            training
            and self.trainable
            and mask is None
            and self.scale
            and self.center
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and fused_batch_norm_wanted()
        )
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        empty = tf.constant([], "float32")
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=tf.cast(self.gamma, "float32"),
            offset=tf.cast(self.beta, "float32"),
            mean=empty,
            variance=empty,
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the unbiased (n - 1) variance; Keras tracks the population one.
        n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = variance * (n - 1.0) / n
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        return y


def with_keras_batch_norm(net: keras.Model) -> keras.Model:
    """A copy of `net` with Keras' own BatchNormalization in place of ours (weights not copied): the reference."""
    return keras.models.clone_model(
        net,
        clone_function=lambda layer: (
            layers.BatchNormalization.from_config(layer.get_config())
            if isinstance(layer, BatchNorm)
            else layer.__class__.from_config(layer.get_config())
        ),
    )


def centre_crop(x, fraction: float):
    """The central `fraction` of each square image's side, resized back to the full size."""
    size = x.shape[1]
    if size is None:
        raise ValueError("centre_crop needs a fixed image size")
    crop = int(round(size * fraction))
    o = (size - crop) // 2
    return keras.ops.image.resize(x[:, o : o + crop, o : o + crop, :], (size, size), interpolation="bilinear")


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class TestTimeViews(layers.Layer):
    """The views a prediction averages over, stacked along the batch axis.

    [images; centre crops; mirrored images; mirrored crops], with the crops only if `crop`
    > 0 and the mirrors only if `flip`. One batch through the net scores them all: the
    convolutions run batched and the graph holds the weights once (an int8 file stays small).
    """

    def __init__(self, flip: bool = True, crop: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.flip, self.crop = bool(flip), float(crop)

    @property
    def count(self) -> int:
        return (2 if self.flip else 1) * (2 if self.crop else 1)

    def call(self, x):
        views = [x, centre_crop(x, self.crop)] if self.crop else [x]
        if self.flip:
            views += [keras.ops.flip(v, axis=2) for v in views]
        return keras.ops.concatenate(views, axis=0)

    def compute_output_shape(self, shape):
        return (None if shape[0] is None else shape[0] * self.count, *shape[1:])

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "crop": self.crop}


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class MeanOfViews(layers.Layer):
    """Average `views` equal blocks of a batch: [p(view 1); ...; p(view k)] -> mean."""

    def __init__(self, views: int, **kwargs):
        super().__init__(**kwargs)
        self.views = int(views)

    def call(self, p):
        return keras.ops.mean(keras.ops.reshape(p, (self.views, -1, p.shape[-1])), axis=0)

    def compute_output_shape(self, shape):
        # Declared, not traced: JAX cannot prove the blocks of an unknown batch are equal.
        return (None if shape[0] is None else shape[0] // self.views, *shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": self.views}


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class LogitMean(layers.Layer):
    """Combine ensemble members' (P(cat), P(dog)) in logit space, then divide by one temperature.

    Each member's log-odds log P(dog) - log P(cat) are averaged and the mean divided by
    `temperature`: a geometric mean of the members' odds, recalibrated. Averaging the
    probabilities instead would pull every sure answer toward the least sure member.
    """

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, members):
        p = keras.ops.clip(keras.ops.stack(members, axis=0), P_FLOOR, 1.0)
        gap = keras.ops.mean(keras.ops.log(p[..., 1]) - keras.ops.log(p[..., 0]), axis=0) / self.temperature
        dog = keras.ops.sigmoid(gap)
        return keras.ops.stack([1.0 - dog, dog], axis=-1)

    def compute_output_shape(self, shapes):
        return shapes[0]

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
