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

import keras
from keras import layers

from .layers import BatchNorm, MeanOfViews, TestTimeViews

# (fire id, squeeze, expand) per fire module: the same in both versions, which differ in the stem
# and in where the max-pools go.
_FIRES = [(2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128), (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256)]
_V1_0 = dict(
    stem=(96, 7),
    fires=_FIRES,
    pool_after=(1, 4, 8),  # after conv1, fire4, fire8
)
_V1_1 = dict(
    stem=(64, 3),
    fires=_FIRES,
    pool_after=(1, 3, 5),  # after conv1, fire3, fire5
)
ARCHITECTURES = {"squeezenet1_0": _V1_0, "squeezenet1_1": _V1_1}
BYPASSED_FIRES = (3, 5, 7, 9)  # the fires whose input is as wide as their output, in both versions


def _conv(x, filters, kernel, name, batch_norm, strides=1, padding="same"):
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        name=name,
        kernel_initializer="he_uniform",
        use_bias=not batch_norm,
    )(x)
    if batch_norm:
        x = BatchNorm(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def fire_module(
    x, fire_id: int, squeeze: int, expand: int, *, batch_norm: bool = False, batch_norm_expand: bool = True
):
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
    *,
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
        y = fire_module(x, fire_id, squeeze, expand, batch_norm=batch_norm, batch_norm_expand=batch_norm_expand)
        x = layers.Add(name=f"fire{fire_id}_bypass")([x, y]) if bypass and fire_id in BYPASSED_FIRES else y
        if fire_id in arch["pool_after"]:
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{fire_id}")(x)
    x = layers.Dropout(dropout, name="drop9")(x)
    x = layers.Conv2D(
        classes,
        1,
        name="conv10",
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
    return squeezenet(
        t.model,
        image_size,
        classes=2,
        batch_norm=t.batch_norm,
        batch_norm_expand=t.batch_norm_expand,
        dropout=t.dropout,
        classifier_relu=t.classifier_relu,
        bypass=t.bypass,
    )


def plain_net(shipped: keras.Model) -> keras.Model:
    """The net inside a shipped model, without the test-time views with_tta wrapped it in."""
    inner = [layer for layer in shipped.layers if isinstance(layer, keras.Model)]
    return inner[0] if inner else shipped


def plain_weights(path) -> list:
    """The plain net's weights inside a shipped model file (which wraps it in its test-time views)."""
    return plain_net(keras.models.load_model(path)).get_weights()


def with_tta(net: keras.Model, *, flip: bool = True, crop: float = 0.0) -> keras.Model:
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
    views = TestTimeViews(flip=flip, crop=crop, name="tta_views")
    p = MeanOfViews(views.count, name="tta_mean", dtype="float32")(net(views(inputs)))
    return keras.Model(inputs, p, name=f"{net.name}_tta")
