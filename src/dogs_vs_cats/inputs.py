"""The training stream: prepared images, shuffled, augmented and batched by tf.data.

Augmentation runs on whole batches inside tf.data, in parallel with the training step,
and every random draw is seeded per batch, so the same seed gives the same batches.
"""

from __future__ import annotations

import math
from pathlib import Path

import tensorflow as tf

from .params import Params
from .paths import prepared
from .records import read_records


def augmenter(params: Params, size: int):
    """Augment a whole batch at once, output `size` square; tf.data runs it while the model trains.

    Random-resized crop, mirror, rotation and the resize to `size` are folded into one affine
    map per image and applied in a single bilinear resampling of the batch. Per-image ops
    (crop, then resize, then rotate) cost three resamplings and thousands of small op calls
    per epoch, and on a small CPU they fell behind the training step (bench/speed.py).
    """
    a = params.train.augment
    src = params.prepare.image_size
    geometric = a.crop_scale < 1.0 or a.flip or a.rotation > 0 or size != src

    def affine(n, seeds):
        """Per-image maps from output pixel (x, y) to input pixel, as ImageProjectiveTransformV3 rows."""
        draws = iter(seeds)

        def uniform(lo, hi):
            return tf.random.stateless_uniform([n], next(draws), lo, hi)

        ones = tf.ones([n])
        if a.crop_scale < 1.0:
            # Area fraction and aspect ratio drawn as in Inception's random-resized crop.
            area = uniform(a.crop_scale, 1.0)
            ratio = tf.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
            w = tf.minimum(src * tf.sqrt(area * ratio), float(src))
            h = tf.minimum(src * tf.sqrt(area / ratio), float(src))
            cx = w / 2 + uniform(0.0, 1.0) * (src - w) - 0.5  # pixel centres sit at integer coordinates
            cy = h / 2 + uniform(0.0, 1.0) * (src - h) - 0.5
        else:
            w = h = src * ones
            cx = cy = (src - 1) / 2 * ones
        mirror = tf.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if a.flip else ones
        angle = uniform(-a.rotation, a.rotation) * 2 * math.pi if a.rotation > 0 else tf.zeros([n])
        c, s = tf.cos(angle), tf.sin(angle)
        # Scale the output square onto the crop (mirrored or not), rotate about the crop's centre.
        m = (size - 1) / 2
        a0, a1 = c * w * mirror / size, -s * h / size
        b0, b1 = s * w * mirror / size, c * h / size
        zeros = tf.zeros([n])
        return tf.stack([a0, a1, cx - (a0 + a1) * m, b0, b1, cy - (b0 + b1) * m, zeros, zeros], axis=1)

    def augment(images, labels, seed):
        """`seed` (2 integers) fixes every random draw: tf.data may run batches in any order."""
        x = tf.cast(images, tf.float32)
        n = tf.shape(x)[0]
        # One split serves every draw: six for the affine map, one each for brightness and contrast.
        *geo_seeds, bright_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 8))
        if geometric:
            x = tf.raw_ops.ImageProjectiveTransformV3(
                images=x,
                transforms=affine(n, geo_seeds),
                output_shape=[size, size],
                fill_value=0.0,
                interpolation="BILINEAR",
                fill_mode="REFLECT",
            )
        if a.brightness > 0:
            x = x + tf.random.stateless_uniform([n, 1, 1, 1], bright_seed, -a.brightness, a.brightness) * 255.0
        if a.contrast > 0:
            mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
            x = (x - mean) * tf.random.stateless_uniform(
                [n, 1, 1, 1], contrast_seed, 1 - a.contrast, 1 + a.contrast
            ) + mean
        return tf.clip_by_value(x, 0.0, 255.0), tf.one_hot(labels, 2)

    return augment


def mixup(alpha: float):
    """mixup (Zhang et al., 2018): blend each image and its label with another's from the batch.

    Each pair gets its own weight from Beta(alpha, alpha), drawn as a ratio of two
    gamma variates since TensorFlow has no Beta sampler.
    """

    def mix(x, y, seed):
        n = tf.shape(x)[0]
        sa, sb, sp = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        a, b = tf.random.stateless_gamma([n], sa, alpha), tf.random.stateless_gamma([n], sb, alpha)
        lam = a / (a + b)
        partner = tf.random.experimental.stateless_shuffle(tf.range(n), sp)
        lx, ly = lam[:, None, None, None], lam[:, None]
        return lx * x + (1 - lx) * tf.gather(x, partner), ly * y + (1 - ly) * tf.gather(y, partner)

    return mix


def train_dataset(
    params: Params,
    size: int,
    shard: tuple[int, int] = (0, 1),
    batch_size: int | None = None,
    source: Path | None = None,
    records=None,
):
    """Shuffled, augmented training batches at `size` px, streamed from `source` (the prepared training
    images by default), epoch after epoch.

    `shard` (i, n) keeps every n-th record from the i-th, in batches of `batch_size`: one worker's
    part of a multi-worker run. `records`, a dataset of (image, label, name), replaces `source`'s.
    """
    t = params.train
    index, count = shard
    if records is None:
        records = read_records(source or prepared("train"), params.prepare.image_size)
    batches = (
        (records.shard(count, index) if count > 1 else records)
        .map(lambda x, y, name: (x, y))
        .shuffle(t.shuffle_buffer, seed=t.seed, reshuffle_each_iteration=True)
        .batch(batch_size or t.batch_size, drop_remainder=False)
    )
    # One seed pair per batch, from a seeded stream that differs each epoch: the random draws
    # then depend on the batch, not on which of tf.data's parallel calls happens to run first.
    seeds = tf.data.Dataset.random(seed=t.seed + index, rerandomize_each_iteration=True).batch(4)
    augment, mix = augmenter(params, size), mixup(t.augment.mixup) if t.augment.mixup > 0 else None

    def step(batch, seed):
        x, y = augment(*batch, seed[:2])
        return mix(x, y, seed[2:]) if mix else (x, y)

    # Endless, so one iterator serves every epoch (fit() is told the steps per epoch), and prefetch
    # refills the shuffle buffer across the epoch boundary. Given a finite dataset, Keras makes a new
    # iterator at each epoch's start and another at its end, and waits while the buffer refills.
    train = tf.data.Dataset.zip((batches, seeds)).map(step, num_parallel_calls=tf.data.AUTOTUNE).repeat()
    return train.prefetch(tf.data.AUTOTUNE)
