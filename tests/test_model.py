"""SqueezeNet: the architecture the paper and the demo describe, and the calibration fold."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from dogs_vs_cats.calibrate import fold_temperature
from dogs_vs_cats.layers import BatchNorm, fused_batch_norm_wanted, with_keras_batch_norm
from dogs_vs_cats.model import squeezenet, with_tta


def test_v1_0_without_batch_norm_is_the_demos_736450_parameter_net():
    net = squeezenet("squeezenet1_0", 224, classes=2, batch_norm=False, classifier_relu=True)
    assert net.count_params() == 736_450
    assert [l.name for l in net.layers if l.name.endswith("_concat")] == [f"fire{i}_concat" for i in range(2, 10)]
    assert net.get_layer("conv1").kernel_size == (7, 7) and net.get_layer("conv1").filters == 96
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in net.layers)


def test_v1_1_and_batch_norm_variants():
    assert squeezenet("squeezenet1_1", 128).count_params() == 723_522
    assert squeezenet("squeezenet1_1", 128).get_layer("conv1").kernel_size == (3, 3)
    bn = squeezenet("squeezenet1_0", 128, batch_norm=True)
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in bn.layers) == 25
    with pytest.raises(ValueError, match="unknown SqueezeNet version 'alexnet'"):
        squeezenet("alexnet", 128)


def test_batch_norm_on_squeezes_only_normalises_conv1_and_the_squeezes():
    net = squeezenet("squeezenet1_1", 128, batch_norm=True, batch_norm_expand=False)
    normalised = sorted(l.name.removesuffix("_bn") for l in net.layers if isinstance(l, BatchNorm))
    assert normalised == sorted(["conv1"] + [f"fire{i}_squeeze1x1" for i in range(2, 10)])
    # The expands keep their biases, as without batch norm; conv1 and the squeezes lose theirs.
    assert net.get_layer("fire2_expand3x3").use_bias and not net.get_layer("fire2_squeeze1x1").use_bias
    full = squeezenet("squeezenet1_1", 128, batch_norm=True)
    assert net.count_params() < full.count_params()


def _bn_pair(dtype: str):
    """Keras' BatchNormalization and ours, same non-trivial weights, one training step on the same batch."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 5, 6, 8)), dtype)
    w = tf.constant(rng.normal(size=(4, 5, 6, 8)), "float32")
    results = []
    for cls in (keras.layers.BatchNormalization, BatchNorm):
        layer = cls(dtype=keras.DTypePolicy("mixed_bfloat16" if dtype == "bfloat16" else "float32"))
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2.0, 8))
        layer.beta.assign(np.linspace(-1.0, 1.0, 8))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * w)
        grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
        results.append(
            dict(
                y=tf.cast(y, "float32").numpy(),
                grads=[tf.cast(g, "float32").numpy() for g in grads],
                mean=layer.moving_mean.numpy(),
                var=layer.moving_variance.numpy(),
                dtype=y.dtype,
            )
        )
    return results


def test_fused_batch_norm_trains_exactly_like_keras_batch_norm():
    import tensorflow as tf

    if not fused_batch_norm_wanted():
        pytest.skip("the fused path is only taken by CPU-only TensorFlow")
    # Ours really runs the fused kernel in training (else the comparison below would be Keras against itself).
    layer = BatchNorm()
    layer.build((2, 3, 3, 4))
    graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(tf.TensorSpec((2, 3, 3, 4))).graph
    assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}
    keras_bn, ours = _bn_pair("float32")
    np.testing.assert_allclose(ours["y"], keras_bn["y"], atol=1e-5)
    for a, b in zip(ours["grads"], keras_bn["grads"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    # Moving statistics moved off their initial 0 / 1, identically (the population variance, not n - 1).
    assert np.abs(ours["mean"]).min() > 0.01
    np.testing.assert_allclose(ours["mean"], keras_bn["mean"], rtol=1e-5)
    np.testing.assert_allclose(ours["var"], keras_bn["var"], rtol=1e-5)


def test_fused_batch_norm_in_bfloat16_keeps_bf16_activations_and_float32_statistics():
    keras_bn, ours = _bn_pair("bfloat16")
    assert ours["dtype"] == keras_bn["dtype"] == "bfloat16"
    # Both round the same float32 result to bf16 (8 bits of mantissa): agree within a couple of ulps.
    np.testing.assert_allclose(ours["y"], keras_bn["y"], atol=0.05)
    np.testing.assert_allclose(ours["var"], keras_bn["var"], rtol=1e-3)
    np.testing.assert_allclose(ours["grads"][1], keras_bn["grads"][1], rtol=0.05, atol=0.5)


def test_inference_takes_keras_own_batch_norm_path():
    net = squeezenet("squeezenet1_1", 64, batch_norm=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    net(x, training=True)  # moves the statistics, so inference has something to use
    clone = with_keras_batch_norm(net)
    assert not any(isinstance(l, BatchNorm) for l in clone.layers)
    clone.set_weights(net.get_weights())
    np.testing.assert_allclose(net.predict(x, verbose=0), clone.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("version", ["squeezenet1_0", "squeezenet1_1"])
def test_simple_bypass_adds_identity_shortcuts_and_no_parameters(version):
    plain, bypassed = squeezenet(version, 96), squeezenet(version, 96, bypass=True)
    assert bypassed.count_params() == plain.count_params()
    adds = [l for l in bypassed.layers if isinstance(l, keras.layers.Add)]
    assert [l.name for l in adds] == ["fire3_bypass", "fire5_bypass", "fire7_bypass", "fire9_bypass"]
    # Each shortcut sums the fire module's input with its output.
    for add in adds:
        fire = add.name.split("_")[0]
        assert bypassed.get_layer(f"{fire}_concat").output in add.input
    bypassed.set_weights(plain.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    assert not np.allclose(bypassed(x, training=False), plain(x, training=False))


def test_parameter_count_does_not_depend_on_image_size():
    assert squeezenet("squeezenet1_0", 96).count_params() == squeezenet("squeezenet1_0", 227).count_params()


def _logit_gap(net, x):
    p = np.asarray(net(x, training=False), dtype=np.float64)
    return np.log(p[:, 1]) - np.log(p[:, 0])


@pytest.mark.parametrize("relu", [False, True])
def test_folding_a_temperature_divides_the_logits_exactly(relu):
    keras.utils.set_random_seed(1)
    net = squeezenet("squeezenet1_1", 64, classifier_relu=relu)
    # Make the head non-trivial so the logits differ between images.
    kernel, bias = net.get_layer("conv10").get_weights()
    net.get_layer("conv10").set_weights([kernel * 50, bias + np.array([0.3, 0.1])])
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    before = _logit_gap(net, x)
    fold_temperature(net, 2.5)
    assert np.allclose(_logit_gap(net, x), before / 2.5, atol=1e-4)
    assert np.abs(before).max() > 1e-3  # the check above compared real numbers, not zeros
    with pytest.raises(ValueError):
        fold_temperature(net, 0)


def test_fitted_temperature_recovers_the_one_that_made_the_labels():
    from dogs_vs_cats.calibrate import fit_temperature

    rng = np.random.default_rng(4)
    gap = rng.normal(0, 4, 20000)
    # Two views per image (say, image and mirror) whose logits differ a little, labels drawn at T = 2.
    views = np.stack([np.stack([np.zeros_like(g), g], axis=1) for g in (gap, gap + rng.normal(0, 0.3, gap.size))])
    p = np.mean(1 / (1 + np.exp(-views[..., 1] / 2.0)), axis=0)
    labels = (rng.uniform(size=gap.size) < p).astype(int)
    assert abs(fit_temperature(views, labels) - 2.0) < 0.15
    assert abs(fit_temperature(views / 3, labels) - 2.0 / 3) < 0.05


def test_scipys_temperature_is_the_one_the_old_grid_search_found_to_1e_3():
    from dogs_vs_cats.calibrate import fit_temperature, p_dog_of_views

    def nll(z, labels, t):
        p = np.clip(p_dog_of_views(z, t), 1e-7, 1 - 1e-7)
        return -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    def grid_search(z, labels):  # the hand-written search fit_temperature replaced
        grid = np.exp(np.linspace(np.log(0.05), np.log(20), 200))
        best = grid[int(np.argmin([nll(z, labels, t) for t in grid]))]
        fine = np.linspace(best / 1.05, best * 1.05, 101)
        return float(fine[int(np.argmin([nll(z, labels, t) for t in fine]))])

    rng = np.random.default_rng(11)
    for true_t, views in ((0.4, 1), (0.62, 4), (1.0, 2), (3.0, 4), (9.0, 1)):
        gap = rng.normal(0, 3, (views, 800)) + rng.normal(0, 3, 800)
        z = np.stack([np.zeros_like(gap), gap], axis=-1)
        labels = (rng.uniform(size=800) < p_dog_of_views(z, true_t)).astype(int)
        found, old = fit_temperature(z, labels), grid_search(z, labels)
        # To 1e-3, or to half the old grid's step where that is coarser (T above 2).
        assert abs(found - old) <= max(1e-3, old * (1.05 - 1 / 1.05) / 200), (true_t, found, old)
        assert nll(z, labels, found) <= nll(z, labels, old) + 1e-12  # never a worse fit than the grid's


def test_schedule_is_keras_cosine_decay_with_a_linear_warm_up_from_zero():
    import math

    from dogs_vs_cats import params as P
    from dogs_vs_cats.recipe import schedule

    steps, peak = 7, 0.003
    for kind, warmup in (("cosine", 3), ("cosine", 0), ("constant", 2)):
        t = P.from_dict(
            {
                "train": {
                    "epochs": 10,
                    "warmup_epochs": warmup,
                    "learning_rate": peak,
                    "schedule": kind,
                    "low_res_size": 0,
                }
            }
        ).train
        lr = schedule(t, steps)
        w, total = warmup * steps, 10 * steps
        for step in range(total + 5):
            if step < w:
                want = peak * step / w  # 0 at the first step, as Keras' warm-up starts
            elif kind == "constant":
                want = peak
            else:
                want = peak * 0.5 * (1 + math.cos(math.pi * min(step - w, total - w) / (total - w)))
            assert float(lr(step)) == pytest.approx(want, rel=1e-5, abs=1e-9), (kind, warmup, step)


def test_flip_tta_averages_image_and_mirror_and_shares_weights():
    keras.utils.set_random_seed(2)
    net = squeezenet("squeezenet1_1", 64)
    tta = with_tta(net, flip=True)
    assert tta.count_params() == net.count_params()
    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    expected = (np.asarray(net(x)) + np.asarray(net(x[:, :, ::-1]))) / 2
    assert np.allclose(np.asarray(tta(x)), expected, atol=1e-6)
    # A mirrored image gets exactly the same answer.
    assert np.allclose(np.asarray(tta(x[:, :, ::-1])), np.asarray(tta(x)), atol=1e-6)


def test_crop_tta_adds_the_zoomed_centre_and_its_mirror(tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    net = squeezenet("squeezenet1_1", 64)
    tta = with_tta(net, flip=True, crop=0.75)
    x = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    # 75% of 64 px is the central 48 px (8 px off each side), zoomed back to 64.
    crop = tf.image.resize(x[:, 8:56, 8:56], (64, 64), method="bilinear").numpy()
    views = [x, x[:, :, ::-1], crop, crop[:, :, ::-1]]
    expected = np.mean([np.asarray(net(v)) for v in views], axis=0)
    assert np.allclose(np.asarray(tta(x)), expected, atol=1e-6)
    assert not np.allclose(expected, np.asarray(with_tta(net, flip=True)(x)), atol=1e-4)  # the crop counted
    # Saved and loaded, the views (custom layers with their settings) come back the same.
    tta.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert np.allclose(np.asarray(loaded(x)), expected, atol=1e-6)
    assert with_tta(net, flip=False, crop=0.0) is net


def test_mixup_blends_images_and_labels_with_the_same_weight():
    import numpy as np
    import tensorflow as tf

    from dogs_vs_cats.inputs import mixup

    tf.random.set_seed(0)
    n = 64
    # Image i is filled with the value i, so each mixed image reveals its two sources and its weight.
    x = tf.constant(np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 3), np.float32))
    y = tf.one_hot(np.arange(n) % 2, 2)
    mx, my = mixup(0.4)(x, y, tf.constant([1, 2], tf.int64))
    mx, my = mx.numpy(), my.numpy()
    assert mx.shape == (n, 4, 4, 3) and my.shape == (n, 2)
    assert np.allclose(my.sum(axis=1), 1.0)
    assert np.allclose(mx, mx[:, :1, :1, :1])  # one weight per image, not per pixel
    assert (my >= 0).all() and (my <= 1).all()
    # Not the identity: with Beta(0.4, 0.4) most pairs are visibly mixed.
    changed = np.abs(mx[:, 0, 0, 0] - np.arange(n)) > 1e-3
    assert changed.mean() > 0.3
    # A blended label is the blend of the two one-hot labels of the sources, so a pair of
    # same-class images keeps a hard label and a cat-dog pair's P(dog) lies strictly inside (0, 1).
    soft = (my[:, 1] > 1e-3) & (my[:, 1] < 1 - 1e-3)
    assert soft.any() and (soft <= changed).all()


def _augment(size: int, **augment):
    from dogs_vs_cats import params as P
    from dogs_vs_cats.inputs import augmenter

    off = dict(flip=False, crop_scale=1.0, rotation=0.0, contrast=0.0, brightness=0.0, mixup=0.0)
    fn = augmenter(
        P.from_dict({"prepare": {"image_size": 32}, "train": {"low_res_size": 0, "augment": {**off, **augment}}}), size
    )
    return lambda images, labels, seed=(3, 4): fn(images, labels, tf_seed(seed))


def tf_seed(seed):
    import tensorflow as tf

    return tf.constant(seed, tf.int64)


def test_batched_augmentation_is_one_exact_resampling():
    import tensorflow as tf

    tf.random.set_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(64) % 2
    x, y = _augment(32)(images, labels)
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy().argmax(1), labels)
    # Resizing for progressive training matches tf.image.resize's half-pixel bilinear.
    x, _ = _augment(24)(images, labels)
    assert np.allclose(x.numpy(), tf.image.resize(images.astype(np.float32), (24, 24)).numpy(), atol=0.02)
    # Mirroring is per image: each is exactly itself or its mirror image, and both happen.
    x = _augment(32, flip=True)(images, labels)[0].numpy()
    mirrored = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(x, images)])
    kept = np.array([np.array_equal(a, b) for a, b in zip(x, images)])
    assert (mirrored ^ kept).all() and 10 < mirrored.sum() < 54


def test_crops_rotations_and_colour_change_each_image_differently_within_range():
    import tensorflow as tf

    tf.random.set_seed(1)
    # A smooth ramp, so a crop or rotation moves values without leaving the image's range.
    ramp = np.linspace(0, 255, 32, dtype=np.float32)[None, None, :, None] * np.ones((16, 32, 1, 3), np.float32)
    x, y = _augment(24, crop_scale=0.35, rotation=0.05, contrast=0.2, brightness=0.1)(
        ramp.astype(np.uint8), np.zeros(16, int)
    )
    x = x.numpy()
    assert x.shape == (16, 24, 24, 3) and y.shape == (16, 2)
    assert x.min() >= 0 and x.max() <= 255
    per_image = x.reshape(16, -1)
    assert len({round(float(v), 3) for v in per_image.std(axis=1)}) == 16  # every image its own crop/colour
    # A crop of a left-to-right ramp still rises left to right (mirroring is off here).
    assert (x[:, 12, -1, 0] > x[:, 12, 0, 0]).all()


def test_every_window_of_256_training_examples_is_about_half_dogs_with_more_photos_than_the_buffer(
    tmp_path, monkeypatch
):
    import tensorflow as tf

    from dogs_vs_cats import params as P
    from dogs_vs_cats.inputs import train_dataset
    from dogs_vs_cats.records import record
    from dogs_vs_cats.stages.split import make_split

    n, buffer, window = 3000, 512, 256
    params = P.from_dict(
        {
            "split": {"n_train": n, "n_val": 10, "n_holdout": 10},
            "prepare": {"image_size": 32},
            "train": {"batch_size": 50, "low_res_size": 0, "shuffle_buffer": buffer},
        }
    )
    names = {0: [f"train/cat.{i}.jpg" for i in range(n)], 1: [f"train/dog.{i}.jpg" for i in range(n)]}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prepared").mkdir(parents=True)
    pixels = bytes(32 * 32 * 3)
    with tf.io.TFRecordWriter("data/prepared/train.tfrecord") as w:  # in split's order, as prepare writes them
        for name, label in make_split(names, params)["train"]:
            w.write(record(pixels, label, name))
    batches = iter(train_dataset(params, 32))
    for epoch in range(2):
        dogs = np.concatenate([np.argmax(next(batches)[1].numpy(), axis=1) for _ in range(n // 50)])
        share = np.convolve(dogs, np.ones(window), "valid") / window
        # One window's share has a standard deviation of at most 0.5 / sqrt(256) = 0.031; a
        # class-sorted stream gives windows of 0. Five deviations bound the ~12 independent windows.
        assert share.min() > 0.5 - 5 * 0.031 and share.max() < 0.5 + 5 * 0.031, (epoch, share.min(), share.max())


def test_augmentation_depends_only_on_its_seed():
    images = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    augment = _augment(24, flip=True, crop_scale=0.35, rotation=0.05, contrast=0.2, brightness=0.1)
    a, b, c = (augment(images, np.zeros(8, int), seed)[0].numpy() for seed in ((5, 6), (5, 6), (5, 7)))
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_a_prepared_store_is_counted_once_and_again_when_it_is_rewritten(tmp_path, monkeypatch):
    import tensorflow as tf

    from dogs_vs_cats import records
    from dogs_vs_cats.records import count_records, record

    store = tmp_path / "train.tfrecord"

    def write(n):
        with tf.io.TFRecordWriter(str(store)) as w:
            for i in range(n):
                w.write(record(bytes(12), i % 2, f"cat.{i}.jpg"))

    write(5)
    reads = []
    real = records._count.__wrapped__
    monkeypatch.setattr(records, "_count", records.functools.lru_cache(lambda *a: reads.append(a) or real(*a)))
    assert [count_records(store) for _ in range(3)] == [5, 5, 5] and len(reads) == 1
    write(7)  # another size: the cache must not answer for the old file
    assert count_records(store) == 7 and len(reads) == 2


def test_training_batches_are_the_same_for_the_same_seed_and_change_every_epoch(tmp_path, monkeypatch):
    import tensorflow as tf

    from dogs_vs_cats import params as P
    from dogs_vs_cats.inputs import train_dataset
    from dogs_vs_cats.records import count_records, record

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prepared").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter("data/prepared/train.tfrecord") as w:
        for i in range(40):
            w.write(record(rng.integers(0, 256, 32 * 32 * 3, np.uint8).tobytes(), i % 2, f"cat.{i}.jpg"))
    assert count_records(tmp_path / "data/prepared/train.tfrecord") == 40
    params = P.from_dict(
        {"prepare": {"image_size": 32}, "train": {"batch_size": 8, "low_res_size": 0, "augment": {"mixup": 0.2}}}
    )

    def two_epochs():  # 40 images in batches of 8: 5 steps an epoch, from one endless stream
        tf.keras.utils.set_random_seed(params.train.seed)
        batches = iter(train_dataset(params, 24))
        epochs = [[next(batches) for _ in range(5)] for _ in range(2)]
        return [np.concatenate([x.numpy().ravel() for x, _ in epoch]) for epoch in epochs]

    first, again = two_epochs(), two_epochs()
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.allclose(first[0], first[1])


def test_weight_average_follows_its_decays_from_its_start_epoch_and_averages_bn_statistics():
    from dogs_vs_cats.callbacks import WeightAverage

    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    assert len(net.non_trainable_weights) == 2  # BN moving mean and variance: averaged too
    rng = np.random.default_rng(0)
    average = WeightAverage(0.9, start=2)
    average.set_model(net)

    def step():
        net.set_weights([rng.normal(size=w.shape).astype("float32") for w in net.get_weights()])
        average.on_train_batch_end(0)

    average.on_epoch_begin(0)  # epoch 1: before the start, nothing is averaged
    step()
    assert average.updates == 0
    average.on_epoch_begin(1)
    expected = None
    seen = []
    for n in range(30):  # a plain mean until n / (n + 1) reaches the decay at n = 9, exponential after
        step()
        seen.append(net.get_weights())
        if n == 9:
            assert all(np.allclose(a, np.mean(w, axis=0), atol=1e-5) for a, w in zip(average.weights(), zip(*seen)))
        d = min(0.9, n / (n + 1))
        current = net.get_weights()
        expected = current if expected is None else [d * e + (1 - d) * c for e, c in zip(expected, current)]
    assert average.updates == 30
    for got, want, now in zip(average.weights(), expected, net.get_weights()):
        assert np.allclose(got, want, atol=1e-5) and not np.allclose(got, now)


def test_weight_average_survives_a_checkpoint_and_refuses_another_models(tmp_path):
    from dogs_vs_cats.callbacks import WeightAverage

    def model(width):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(width)])

    net = model(3)
    saved = WeightAverage(0.99, start=1)
    saved.set_model(net)
    saved.on_epoch_begin(0)
    for _ in range(3):
        net.set_weights([w + 1 for w in net.get_weights()])
        saved.on_train_batch_end(0)
    saved.save(tmp_path / "average.npz")

    restored = WeightAverage(0.99, start=1)
    restored.set_model(model(3))
    assert restored.load(tmp_path / "average.npz") and restored.updates == 3
    assert all(np.array_equal(a, b) for a, b in zip(restored.weights(), saved.weights()))
    other = WeightAverage(0.99, start=1)
    other.set_model(model(5))
    assert not other.load(tmp_path / "average.npz") and other.updates == 0
    assert not restored.load(tmp_path / "missing.npz")


def test_validation_in_memory_scores_as_keras_evaluate_does(tmp_path, monkeypatch):
    import tensorflow as tf

    from dogs_vs_cats import params as P
    from dogs_vs_cats.callbacks import Validation
    from dogs_vs_cats.model import from_params
    from dogs_vs_cats.recipe import compile_for_training
    from dogs_vs_cats.records import record

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prepared").mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (70, 32, 32, 3), np.uint8)
    with tf.io.TFRecordWriter("data/prepared/val.tfrecord") as w:
        for i, image in enumerate(images):
            w.write(record(image.tobytes(), i % 2, f"dog.{i}.jpg"))
    params = P.from_dict({"prepare": {"image_size": 32}, "train": {"low_res_size": 0, "label_smoothing": 0.2}})
    keras.utils.set_random_seed(3)
    net = from_params(params.train, 32)
    compile_for_training(net, params.train, steps_per_epoch=1)
    validation = Validation(params, epochs=[5, 10])
    assert validation.epochs == {5, 10} and len(validation.y) == 70  # two batches of 64: a partial one too
    got = validation(net)
    want = net.evaluate(
        images.astype("float32"),
        keras.utils.to_categorical(np.arange(70) % 2, 2),
        batch_size=64,
        return_dict=True,
        verbose=0,
    )
    for key in ("accuracy", "loss", "log_loss"):
        assert got[f"val_{key}"] == pytest.approx(want[key], abs=1e-4)
    assert got["val_loss"] != pytest.approx(got["val_log_loss"], abs=1e-3)  # the smoothed loss is not the log loss


def test_view_logits_are_each_views_pooled_logits_in_order(tmp_path):
    import tensorflow as tf

    from dogs_vs_cats.calibrate import view_logits
    from dogs_vs_cats.layers import TestTimeViews
    from dogs_vs_cats.records import record

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (37, 32, 32, 3), np.uint8)  # one batch and a partial one
    path = tmp_path / "val.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, image in enumerate(images):
            w.write(record(image.tobytes(), i % 2, f"dog.{i}.jpg"))
    keras.utils.set_random_seed(6)
    net = squeezenet("squeezenet1_1", 32)
    views = TestTimeViews(flip=True, crop=0.8)
    z, y = view_logits(net, views, path, 32)
    assert z.shape == (4, 37, 2) and list(y) == [i % 2 for i in range(37)]
    head = keras.Model(net.input, net.get_layer("avgpool10").output)
    x = tf.constant(images, tf.float32)
    # View k of image i, scored alone: mirrors and crops in the order TestTimeViews stacks them.
    want = np.asarray(head(views(x), training=False)).reshape(4, 37, 2)
    np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-4)
    assert np.abs(z[0] - z[2]).max() > 1e-4  # the mirror is a different view, not a copy


def test_multi_worker_batch_must_split_evenly_over_the_replicas():
    from dogs_vs_cats import params as P
    from dogs_vs_cats.common import UserError
    from dogs_vs_cats.distributed import fit_replicated

    class ThreeReplicas:  # checked before the strategy does anything
        num_replicas_in_sync = 3

    params = P.from_dict({"train": {"batch_size": 32}})
    with pytest.raises(UserError, match=r"train.batch_size = 32 is invalid for 3 replicas: expected a multiple"):
        fit_replicated(None, ThreeReplicas(), params, 32, steps=1, epochs=1, initial_epoch=0, callbacks=[])


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_native_bf16(monkeypatch):
    import tensorflow as tf

    from dogs_vs_cats import recipe

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU decides the precision, not the CPU flags")
    monkeypatch.setattr(recipe, "cpu_info", lambda: ("test CPU", frozenset({"avx2", "avx512f"})))
    assert recipe.choose_precision("auto") == "float32"
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(recipe, "cpu_info", lambda flag=flag: ("test CPU", frozenset({"avx512f", flag})))
        assert recipe.choose_precision("auto") == "mixed_bfloat16"
    assert recipe.choose_precision("float32") == "float32"


def test_cpu_info_reads_this_machines_model_and_flags():
    import os

    from benchlib import machine
    from dogs_vs_cats.common import cpu_info

    name, flags = cpu_info()
    text = open("/proc/cpuinfo").read()
    if "model name" in text:  # x86 Linux; elsewhere the name stays "unknown CPU"
        assert name != "unknown CPU" and f": {name}\n" in text
    if "\nflags" in text:
        assert len(flags) > 10 and all(f" {f}" in text for f in flags)
    assert machine().startswith(f"{os.cpu_count()} cores, {name}, ")
