"""FixMatch (Sohn et al., 2020): learning from unlabelled photos by consistency between two views.

Every training step sees a batch of labelled photos and `ratio` times as many unlabelled ones.
Each unlabelled photo is shown twice: a weak view (a mirror at most) and a strong view
(the teacher's random crop and rotation, strong colour changes, and a cut-out square). The
net's own answer on the weak view becomes a hard label for the strong view wherever the net
is at least `threshold` sure; elsewhere the photo contributes nothing to that step. So every
unlabelled photo is looked at in every pass, and the mask, not a fixed list, decides which
teach; as the net improves, more of them do.

Unlike a fixed set of pseudo-labels, the labels are never stored: the test photos stream
from their prepared file, and memory does not grow with the pool. The net starts from the
teacher's weights (the `train` stage's model), so a variant costs only its own training.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import keras
import tensorflow as tf

from .inputs import augmenter, train_dataset
from .model import from_params, plain_weights
from .params import Augment, Params
from .paths import prepared
from .records import read_records


def consistency_loss(p_weak, p_strong, threshold: float):
    """(loss, mask): cross-entropy of the strong view's P against the weak view's argmax, for the
    photos whose weak view the net gives at least `threshold`; averaged over every photo, sure or not."""
    p_weak = tf.stop_gradient(tf.cast(p_weak, tf.float32))
    mask = tf.cast(tf.reduce_max(p_weak, axis=-1) >= threshold, tf.float32)
    target = tf.one_hot(tf.argmax(p_weak, axis=-1), tf.shape(p_weak)[-1])
    ce = keras.losses.categorical_crossentropy(target, tf.cast(p_strong, tf.float32))
    return tf.reduce_mean(ce * mask), mask


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class FixMatch(keras.Model):
    """The SqueezeNet graph with FixMatch's training step; its weights are the plain net's, in order.

    Fed ((labelled, weak, strong), labels): the compiled loss on the labelled photos plus
    `weight` times the consistency loss on the unlabelled ones. The weak view is scored in
    inference mode (batch-norm statistics, no dropout), as a shipped net would score it.

    Those statistics must describe ordinary photos. Normalising the strong views with their own
    batch is what FixMatch wants, but letting them also move the running statistics drags them
    toward darkened, washed-out, cut-out photos: the first runs lost three points of validation
    accuracy that way, and with them most confident targets. So after each step the running
    statistics are put back and moved by the labelled batch alone, as the teacher's were.

    With `normalise="joint"` (FixMatch's) the labelled photos and the strong views still share one
    batch's statistics while the weights learn, so the weights learn under a normalisation that
    inference, with the labelled photos' statistics, never applies. `"separate"` normalises each
    batch by its own statistics: the labelled photos' step is exactly the teacher's, and the running
    statistics are the ones that pass moved, before the step, with no extra pass to move them.
    """

    def __init__(self, *args, threshold: float = 0.95, weight: float = 1.0, normalise: str = "joint", **kwargs):
        super().__init__(*args, **kwargs)
        self.threshold, self.weight, self.normalise = threshold, weight, normalise
        self.means = {name: keras.metrics.Mean(name=name) for name in ("loss", "log_loss", "past_threshold")}
        self.labelled_accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [*self.means.values(), self.labelled_accuracy]

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "weight": self.weight, "normalise": self.normalise}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        settings = {k: config.pop(k) for k in ("threshold", "weight", "normalise") if k in config}
        graph = keras.Model.from_config(config, custom_objects=custom_objects)
        return cls(graph.inputs, graph.outputs, name=graph.name, **settings)

    def running_statistics(self) -> list:
        return [
            v
            for layer in self.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)
        ]

    def train_step(self, data):
        (labelled, weak, strong), y = data
        p_weak = self(weak, training=False)
        step = self._joint_step if self.normalise == "joint" else self._separate_step
        loss, mask, p_labelled = step(labelled, strong, y, p_weak)
        self.means["loss"].update_state(loss)
        self.means["log_loss"].update_state(keras.losses.categorical_crossentropy(y, p_labelled))
        self.means["past_threshold"].update_state(mask)
        self.labelled_accuracy.update_state(y, p_labelled)
        return {m.name: m.result() for m in self.metrics}

    def _joint_step(self, labelled, strong, y, p_weak):
        """One pass over both batches; then the statistics are put back and moved by the labelled batch."""
        before = self._statistics()
        with tf.GradientTape() as tape:
            n = tf.shape(labelled)[0]
            p = self(tf.concat([labelled, strong], axis=0), training=True)
            p_labelled, p_strong = p[:n], p[n:]
            loss, mask = self._loss(y, p_labelled, p_weak, p_strong)
        self._learn(tape, loss)
        self._restore(before)
        self(labelled, training=True)  # only to move the running statistics
        return loss, mask, p_labelled

    def _separate_step(self, labelled, strong, y, p_weak):
        """A pass per batch; the statistics end where the labelled pass left them."""
        with tf.GradientTape() as tape:
            p_labelled = self(labelled, training=True)
            moved = self._statistics()
            p_strong = self(strong, training=True)
            loss, mask = self._loss(y, p_labelled, p_weak, p_strong)
        self._learn(tape, loss)
        self._restore(moved)
        return loss, mask, p_labelled

    def _loss(self, y, p_labelled, p_weak, p_strong):
        unsupervised, mask = consistency_loss(p_weak, p_strong, self.threshold)
        return self.loss(y, p_labelled) + self.weight * unsupervised, mask

    def _learn(self, tape, loss):
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)

    def _statistics(self) -> list:
        return [tf.identity(v) for v in self.running_statistics()]

    def _restore(self, values) -> None:
        for v, value in zip(self.running_statistics(), values):
            v.assign(value)


def weak_and_strong(params: Params, size: int):
    """Both views of a batch of unlabelled photos, every random draw from `seed` (4 pairs)."""
    u, a = params.unlabelled, params.train.augment
    only_mirror = Augment(flip=True, crop_scale=1.0, rotation=0.0, contrast=0.0, brightness=0.0, mixup=0.0)
    strong_colour = replace(a, contrast=max(a.contrast, u.colour), brightness=max(a.brightness, u.colour))
    weak = augmenter(replace(params, train=replace(params.train, augment=only_mirror)), size)
    strong = augmenter(replace(params, train=replace(params.train, augment=strong_colour)), size)

    def views(images, seed):
        no_labels = tf.zeros(tf.shape(images)[:1], tf.int32)
        pairs = tf.reshape(seed, [4, 2])
        x_weak, _ = weak(images, no_labels, pairs[0])
        x_strong, _ = strong(images, no_labels, pairs[1])
        x_strong = saturation(x_strong, u.colour, pairs[2])
        return x_weak, cutout(x_strong, u.cutout, pairs[3]) if u.cutout else x_strong

    return views


def saturation(x, strength: float, seed):
    """Scale each image's colourfulness by a factor in [1 - strength, 1 + strength]."""
    if not strength:
        return x
    n = tf.shape(x)[0]
    grey = tf.reduce_mean(x, axis=-1, keepdims=True)
    factor = tf.random.stateless_uniform([n, 1, 1, 1], seed, 1 - strength, 1 + strength)
    return tf.clip_by_value(grey + (x - grey) * factor, 0.0, 255.0)


def cutout(x, fraction: float, seed):
    """Grey out one square per image (DeVries & Taylor, 2017), of side up to `fraction` of the image's,
    centred anywhere: the strong view must be recognised from what is left."""
    n, size = tf.shape(x)[0], tf.shape(x)[1]
    side, cy, cx = tf.unstack(tf.random.stateless_uniform([3, n], seed) * tf.cast(size, tf.float32))
    side = side * fraction
    coords = tf.cast(tf.range(size), tf.float32) + 0.5
    rows = tf.abs(coords[None, :] - cy[:, None]) <= side[:, None] / 2
    cols = tf.abs(coords[None, :] - cx[:, None]) <= side[:, None] / 2
    inside = rows[:, :, None] & cols[:, None, :]
    return tf.where(inside[..., None], 127.5, x)


class Consistency:
    """How the `student` stage trains (trainer.train's learner): FixMatch, from the teacher's weights."""

    def __init__(self, teacher: Path, pool: int):
        """`pool`: how many photos `prepared("test")` holds, as the stage counted them (counting reads the file)."""
        self.teacher, self.pool, self.unlabelled = teacher, pool, prepared("test")
        self.inputs = (prepared("train"), self.unlabelled, teacher)
        self.sections = ("train", "prepare", "unlabelled")

    def images(self, params: Params) -> int:
        """Unlabelled photos per epoch: an epoch is one pass over the pool."""
        return self.pool

    def steps(self, params: Params) -> int:
        return math.ceil(self.images(params) / (params.unlabelled.ratio * params.train.batch_size))

    def build(self, params: Params, steps: int) -> keras.Model:
        from .recipe import compile_for_training, warmup_epochs

        u, t = params.unlabelled, params.train
        graph = from_params(t, params.prepare.image_size)
        net = FixMatch(
            graph.inputs, graph.outputs, name=graph.name, threshold=u.threshold, weight=u.weight, normalise=u.normalise
        )
        net.set_weights(plain_weights(self.teacher))
        compile_for_training(net, replace(t, warmup_epochs=warmup_epochs(t.epochs, steps)), steps)
        return net

    def stream(self, params: Params, size: int):
        """((labelled, weak, strong), labels) batches, endless: the labelled stream as the teacher's,
        beside `ratio` times as many unlabelled photos, both views made in tf.data."""
        t, u = params.train, params.unlabelled
        labelled = train_dataset(params, size, source=prepared("train"))
        photos = (
            read_records(self.unlabelled, params.prepare.image_size)
            .map(lambda x, y, name: x)  # a test photo's label field (-1) is never read
            .shuffle(t.shuffle_buffer, seed=t.seed + 1, reshuffle_each_iteration=True)
            .batch(u.ratio * t.batch_size)
        )
        seeds = tf.data.Dataset.random(seed=t.seed + 1, rerandomize_each_iteration=True).batch(8)
        views = weak_and_strong(params, size)
        unlabelled = (
            tf.data.Dataset.zip((photos, seeds))
            .map(lambda x, seed: views(tf.cast(x, tf.float32), seed), num_parallel_calls=tf.data.AUTOTUNE)
            .repeat()
        )
        both = tf.data.Dataset.zip((labelled, unlabelled)).map(lambda l, u: ((l[0], u[0], u[1]), l[1]))
        return both.prefetch(tf.data.AUTOTUNE)
