"""Distillation (Hinton et al., 2015): one net taught the ensemble's answers, for the edge.

An ensemble scores better than its members but costs their sum at every prediction; the edge
ships one SqueezeNet. The `edge` stage can teach one member to answer as the ensemble does:
starting from its weights, it sees the training photos (and, with `edge.test_photos`, the test
photos too, whose labels it never reads) augmented as the teacher's were, and on each view it
learns the ensemble's P(dog) for that same view, a soft target. Scoring the very view the
student sees keeps teacher and student consistent (Beyer et al., 2022, "a good teacher is
patient and consistent"), and a soft target carries what a hard label cannot: how sure to be.

The ensemble scores each step's views with its members' plain nets (without their test-time
views, which would triple the cost), at the training precision, combined in logit space with the
ensemble's own temperature.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import keras
import tensorflow as tf

from .inputs import train_dataset
from .layers import LogitMean
from .model import from_params, plain_net, plain_weights
from .params import Params
from .paths import prepared
from .recipe import compile_for_training, warmup_epochs
from .records import count_records, read_records


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class Distil(keras.Model):
    """The SqueezeNet graph with distillation's training step; its weights are the plain net's, in order.

    The teacher is attached (`attach`), never tracked: the weights, the checkpoints and the
    shipped net are the student's alone. Fed (images, anything): the cross-entropy of the
    student's P against the teacher's on the same images (its `loss`, the epoch log's only loss: there
    is no label to take a log loss against); the labels are not read.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._teacher = None
        self.means = {name: keras.metrics.Mean(name=name) for name in ("loss", "agreement")}

    @property
    def metrics(self):
        return list(self.means.values())

    @classmethod
    def from_config(cls, config, custom_objects=None):
        graph = keras.Model.from_config(config, custom_objects=custom_objects)
        return cls(graph.inputs, graph.outputs, name=graph.name)

    def attach(self, teacher: keras.Model) -> None:
        self._teacher = lambda x: teacher(x, training=False)  # a function: Keras tracks no layers through it

    def train_step(self, data):
        x = data[0]  # the labels, where there are any, are not read
        target = tf.stop_gradient(tf.cast(self._teacher(x), tf.float32))
        with tf.GradientTape() as tape:
            p = self(x, training=True)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(target, tf.cast(p, tf.float32)))
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        agree = tf.cast(tf.argmax(p, axis=-1) == tf.argmax(target, axis=-1), tf.float32)
        self.means["loss"].update_state(loss)
        self.means["agreement"].update_state(agree)
        return {m.name: m.result() for m in self.metrics}


def ensemble_teacher(ensemble: keras.Model, params: Params) -> keras.Model:
    """The ensemble's members as plain nets at the training precision, combined as the ensemble combines them."""
    size = params.prepare.image_size
    image = keras.Input((size, size, 3), name="image")
    outputs = []
    for member in (layer for layer in ensemble.layers if isinstance(layer, keras.Model)):
        net = from_params(params.train, size)
        net.set_weights(plain_net(member).get_weights())
        net.name = member.name
        net.trainable = False
        outputs.append(net(image, training=False))
    temperature = ensemble.get_layer("logit_mean").temperature
    return keras.Model(image, LogitMean(temperature, dtype="float32")(outputs), name="teacher")


class Distillation:
    """How the `edge` stage trains (trainer.train's learner): from `start`'s weights, toward `ensemble`'s answers."""

    def __init__(self, ensemble: Path, start: Path, pool: int):
        """`pool`: the test photos to learn from too (0: the training photos alone)."""
        self.ensemble, self.start, self.pool = ensemble, start, pool
        self.sources = (prepared("train"), *([prepared("test")] if pool else []))
        self.inputs = (*self.sources, ensemble, start)
        self.sections = ("train", "prepare", "edge")

    def images(self, params: Params) -> int:
        return count_records(prepared("train")) + self.pool

    def steps(self, params: Params) -> int:
        return math.ceil(self.images(params) / params.train.batch_size)

    def build(self, params: Params, steps: int) -> keras.Model:
        t = params.train
        graph = from_params(t, params.prepare.image_size)
        net = Distil(graph.inputs, graph.outputs, name=graph.name)
        net.set_weights(plain_weights(self.start))
        compile_for_training(net, replace(t, warmup_epochs=warmup_epochs(t.epochs, steps)), steps)
        return net

    def attach(self, net: Distil, params: Params) -> None:
        """Give a built or resumed student its teacher."""
        net.attach(ensemble_teacher(keras.models.load_model(self.ensemble, compile=False), params))

    def stream(self, params: Params, size: int):
        """(images, unused) batches, endless: the training photos and the test photos in one shuffled
        stream, augmented as the teacher's were."""
        if not self.pool:
            return train_dataset(params, size)
        t = params.train
        records = tf.data.Dataset.sample_from_datasets(
            [read_records(s, params.prepare.image_size).repeat() for s in self.sources],
            weights=[1 - self.pool / (n := self.images(params)), self.pool / n],
            seed=t.seed + 2,
        )
        return train_dataset(params, size, records=records)
