"""SqueezeNet (Iandola et al., 2016, arXiv 1602.07360) in Keras.

v1.0 is the paper's Table 1 and DT42's demo: 736,450 parameters with 2 classes.
v1.1 is DeepScale's revision: a 3x3 stem and earlier pooling, 2.4x less computation
at the same ImageNet accuracy.

Without batch normalisation the paper's net is known to sit at chance from a poor
start (DeepScale/SqueezeNet#4). We initialise as torchvision does instead of Keras'
Glorot default: He (Kaiming) uniform everywhere and N(0, 0.01) for the final
classifier conv, so the first logits are near zero and the ReLU in front of the
pooling does not start dead. This changes no parameter count.

`bypass=True` adds the paper's "simple bypass" (Section 6): identity shortcuts around
fire3, fire5, fire7 and fire9, where input and output widths match. No parameters are
added; the paper reports +2.9 points top-1 on ImageNet over the plain net.
"""
from __future__ import annotations

import functools

import keras
from keras import layers

# (name, squeeze, expand) per fire module, and where the max-pools go.
_V1_0 = dict(
    stem=(96, 7),
    fires=[(2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128), (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256)],
    pool_after=(1, 4, 8),  # after conv1, fire4, fire8
)
_V1_1 = dict(
    stem=(64, 3),
    fires=[(2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128), (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256)],
    pool_after=(1, 3, 5),  # after conv1, fire3, fire5
)
ARCHITECTURES = {"squeezenet1_0": _V1_0, "squeezenet1_1": _V1_1}
BYPASSED_FIRES = (3, 5, 7, 9)  # the fires whose input is as wide as their output, in both versions


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
    separate element-wise ops, each a full pass over memory; on a 2-core CPU that made
    a bf16 step 1.9-2.2x slower than without batch norm, cancelling most of bf16's gain
    (README, "bf16 and batch norm"). FusedBatchNormV3 (oneDNN) takes bf16 input directly and
    normalises in one pass, accumulating in float32 (1.14-1.19x). Same weights, same maths:
    outputs, gradients and moving statistics match Keras' layer (tests/test_model.py).
    Inference, GPUs, other backends and masked inputs take Keras' own path.
    """

    def call(self, inputs, training=None, mask=None):
        fusable = (
            training and self.trainable and mask is None and self.scale and self.center
            and len(inputs.shape) == 4 and self.axis in (-1, 3) and fused_batch_norm_wanted()
        )
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        empty = tf.constant([], "float32")
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.cast(self.gamma, "float32"), offset=tf.cast(self.beta, "float32"),
            mean=empty, variance=empty, epsilon=self.epsilon, exponential_avg_factor=1.0,
            data_format="NHWC", is_training=True,
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
    return keras.models.clone_model(net, clone_function=lambda layer: (
        layers.BatchNormalization.from_config(layer.get_config()) if isinstance(layer, BatchNorm)
        else layer.__class__.from_config(layer.get_config())))


def _conv(x, filters, kernel, name, batch_norm, strides=1, padding="same"):
    x = layers.Conv2D(
        filters, kernel, strides=strides, padding=padding, name=name,
        kernel_initializer="he_uniform", use_bias=not batch_norm,
    )(x)
    if batch_norm:
        x = BatchNorm(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def fire_module(x, fire_id: int, squeeze: int, expand: int, batch_norm: bool = False, batch_norm_expand: bool = True):
    """Squeeze with 1x1 convs, then expand with 1x1 and 3x3 convs side by side."""
    p = f"fire{fire_id}"
    s = _conv(x, squeeze, 1, f"{p}_squeeze1x1", batch_norm)
    expand_bn = batch_norm and batch_norm_expand
    left = _conv(s, expand, 1, f"{p}_expand1x1", expand_bn)
    right = _conv(s, expand, 3, f"{p}_expand3x3", expand_bn)
    return layers.Concatenate(axis=-1, name=f"{p}_concat")([left, right])


def squeezenet(
    version: str = "squeezenet1_1",
    image_size: int | None = 128,
    classes: int = 2,
    batch_norm: bool = False,
    dropout: float = 0.5,
    classifier_relu: bool = False,
    bypass: bool = False,
    batch_norm_expand: bool = True,
) -> keras.Model:
    """Channels-last SqueezeNet taking raw 0..255 RGB pixels, ending in a softmax.

    `image_size=None` accepts any size: every layer is a convolution or a pooling.
    `batch_norm_expand=False` normalises only conv1 and the squeeze convs, whose outputs are
    4-8x narrower than the expands': most of batch norm's cost is in the expands.
    """
    try:
        arch = ARCHITECTURES[version]
    except KeyError:
        raise ValueError(f"unknown SqueezeNet version {version!r}; use one of {', '.join(ARCHITECTURES)}") from None
    inputs = keras.Input((image_size, image_size, 3), name="image")
    # Scaling inside the model means every consumer (evaluate, predict, TFLite) feeds raw pixels.
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    filters, kernel = arch["stem"]
    x = _conv(x, filters, kernel, "conv1", batch_norm, strides=2, padding="valid")
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for fire_id, squeeze, expand in arch["fires"]:
        y = fire_module(x, fire_id, squeeze, expand, batch_norm, batch_norm_expand)
        x = layers.Add(name=f"fire{fire_id}_bypass")([x, y]) if bypass and fire_id in BYPASSED_FIRES else y
        if fire_id in arch["pool_after"]:
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{fire_id}")(x)
    x = layers.Dropout(dropout, name="drop9")(x)
    x = layers.Conv2D(
        classes, 1, name="conv10",
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
    )(x)
    if classifier_relu:
        # The paper's ReLU here is what stalls training at chance: once both class maps
        # go negative everywhere, the pooled logits are 0 and no gradient flows back.
        x = layers.ReLU(name="conv10_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avgpool10")(x)
    # Softmax in float32 even under mixed precision: bf16 probabilities are too coarse for log loss.
    outputs = layers.Activation("softmax", dtype="float32", name="p")(x)
    return keras.Model(inputs, outputs, name=version)


def from_params(t, image_size: int | None) -> keras.Model:
    """The net that params.train `t` describes, at `image_size`."""
    return squeezenet(t.model, image_size, 2, t.batch_norm, t.dropout, t.classifier_relu, t.bypass, t.batch_norm_expand)


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


def centre_crop(x, fraction: float):
    """The central `fraction` of each square image's side, resized back to the full size."""
    size = x.shape[1]
    if size is None:
        raise ValueError("centre_crop needs a fixed image size")
    crop = int(round(size * fraction))
    o = (size - crop) // 2
    return keras.ops.image.resize(x[:, o:o + crop, o:o + crop, :], (size, size), interpolation="bilinear")


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


# Models saved before train.tta_crop existed name these two layers; kept so they still load.
@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class HorizontalFlip(layers.Layer):
    def call(self, x):
        return keras.ops.flip(x, axis=2)


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class MeanOfHalves(MeanOfViews):
    def __init__(self, **kwargs):
        kwargs.pop("views", None)
        super().__init__(views=2, **kwargs)


def with_tta(net: keras.Model, flip: bool = True, crop: float = 0.0) -> keras.Model:
    """Average the net's output over test-time views: the mirror image, a centre crop, or both.

    Cats and dogs are left-right symmetric, so the mirror is free accuracy at twice the
    inference cost. The centre crop answers a train-test mismatch (Touvron et al., 2019,
    "Fixing the train-test resolution discrepancy"): random-resized crops show the net
    animals larger during training than a whole photo does at test time; zooming in
    on the centre shows them at the size it learned. Living inside the saved model, the
    views reach every consumer (evaluate, submission, predict, TFLite) without being
    re-implemented.
    """
    if not flip and not crop:
        return net
    inputs = keras.Input(net.input_shape[1:], name="image")
    views = TestTimeViews(flip, crop, name="tta_views")
    p = MeanOfViews(views.count, name="tta_mean", dtype="float32")(net(views(inputs)))
    return keras.Model(inputs, p, name=f"{net.name}_tta")


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
