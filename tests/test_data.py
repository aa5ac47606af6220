"""split and prepare on tiny generated competitions: labels, balance, decoding of real-world messes."""

from __future__ import annotations

import csv
import json
import zipfile

import numpy as np
import pytest

from dogs_vs_cats import params as P
from dogs_vs_cats.images import BadImage, TooLarge, load_image
from dogs_vs_cats.records import read_records, record
from dogs_vs_cats.stages.split import make_split
from harness import image_bytes, make_competition, run_cli


def params_with(**sections):
    raw = {}
    for dotted, v in sections.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = v
    return P.from_dict(raw)


def fake_names(n):
    return {0: [f"train/cat.{i}.jpg" for i in range(n)], 1: [f"train/dog.{i}.jpg" for i in range(n)]}


def test_split_is_balanced_disjoint_and_deterministic():
    params = params_with(split__n_train=20, split__n_val=10, split__n_holdout=6)
    a = make_split(fake_names(30), params)
    assert a == make_split(fake_names(30), params)
    assert {k: len(v) for k, v in a.items()} == {"train": 20, "val": 10, "holdout": 6}
    for rows in a.values():
        assert sum(label for _, label in rows) * 2 == len(rows)
        assert all(("dog" in name) == bool(label) for name, label in rows)
    names = [set(n for n, _ in rows) for rows in a.values()]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    other_seed = make_split(
        fake_names(30), params_with(split__n_train=20, split__n_val=10, split__n_holdout=6, split__seed=7)
    )
    assert other_seed["train"] != a["train"]


def test_the_training_list_is_in_a_seeded_random_order_not_sorted_by_class():
    params = params_with(split__n_train=400, split__n_val=10, split__n_holdout=10)
    train = make_split(fake_names(300), params)["train"]
    labels = np.array([label for _, label in train])
    assert train == make_split(fake_names(300), params)["train"]
    assert train != sorted(train)
    # Sorted, the first half would be all cats; shuffled, each half holds 100 +- about 10 dogs.
    assert 70 <= labels[:200].sum() <= 130 and 70 <= labels[200:].sum() <= 130


def test_growing_the_training_set_never_moves_validation_or_holdout_images():
    small = make_split(fake_names(40), params_with(split__n_train=10, split__n_val=8, split__n_holdout=8))
    large = make_split(fake_names(40), params_with(split__n_train=40, split__n_val=8, split__n_holdout=8))
    assert small["val"] == large["val"] and small["holdout"] == large["holdout"]
    assert set(small["train"]) < set(large["train"])


def test_a_split_larger_than_the_data_names_the_keys_to_lower():
    with pytest.raises(
        P.UserError,
        match=r"split.n_train \+ split.n_val \+ split.n_holdout = 60 needs 30 cat images but train.zip has 10",
    ):
        make_split(fake_names(10), params_with(split__n_train=40, split__n_val=10, split__n_holdout=10))


def test_split_stage_ignores_unlabelled_names_with_a_warning(tmp_path):
    comp = make_competition(
        tmp_path / "comp", n_per_class=6, extra_train={"readme.txt": b"hi", "bird.1.jpg": image_bytes()}
    )
    (tmp_path / "params.yaml").write_text(f"data: {{source: {comp}}}\nsplit: {{n_train: 4, n_val: 4, n_holdout: 2}}\n")
    assert run_cli(["download"], tmp_path).returncode == 0
    result = run_cli(["split"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ignored 2 file(s) in train.zip" in result.stderr
    rows = list(csv.DictReader(open(tmp_path / "data/split/train.csv")))
    assert len(rows) == 4 and {r["label"] for r in rows} == {"0", "1"}


@pytest.mark.parametrize(
    "kind, fmt, mode",
    [
        ("cat", "JPEG", "L"),
        ("dog", "JPEG", "CMYK"),
        ("cat", "PNG", "RGBA"),
        ("dog", "PNG", "I;16"),
        ("cat", "GIF", "P"),
        ("dog", "PNG", "RGB"),
        ("cat", "BMP", "RGB"),
        ("dog", "WEBP", "RGB"),
        ("cat", "WEBP", "RGBA"),
    ],
)
def test_any_decodable_image_becomes_size_by_size_rgb(kind, fmt, mode):
    reference = load_image(image_bytes(kind, (64, 48)), 32).astype(int)
    out = load_image(image_bytes(kind, (64, 48), fmt=fmt, mode=mode), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    # Whatever the mode, the picture survives: bright where the RGB original is bright.
    gray_ref, gray_out = reference.mean(axis=2), out.astype(int).mean(axis=2)
    assert np.corrcoef(gray_ref.ravel(), gray_out.ravel())[0, 1] > 0.8


def test_transparent_pixels_become_white_and_half_transparent_ones_blend_over_white():
    import io

    from PIL import Image

    arr = np.zeros((32, 32, 4), np.uint8)
    arr[..., 0] = 200  # red everywhere, but:
    arr[:, :16, 3] = 0  # the left half fully transparent
    arr[:, 16:, 3] = 128  # the right half half transparent
    for fmt, mode in (("PNG", "RGBA"), ("PNG", "LA"), ("GIF", "P")):
        img = Image.fromarray(arr, "RGBA")
        if mode == "LA":
            img = img.convert("LA")
        elif mode == "P":  # a palette GIF with one transparent colour: the left half
            img = Image.fromarray(arr[..., :3], "RGB").convert("P")
            img.info["transparency"] = img.getpixel((0, 0))
            img.paste(img.getpixel((0, 0)), (0, 0, 16, 32))
        buf = io.BytesIO()
        img.save(buf, fmt, **({"transparency": img.info["transparency"]} if mode == "P" else {}))
        out = load_image(buf.getvalue(), 32).astype(int)
        assert (out[:, :14] == 255).all(), mode  # the left half, clear of the resize's blend at the seam
        if mode == "RGBA":
            # 200 red over white at alpha 128/255: red 200 * a + 255 * (1 - a), green and blue 255 * (1 - a).
            a = 128 / 255
            assert np.abs(out[:, 18:] - [200 * a + 255 * (1 - a), 255 * (1 - a), 255 * (1 - a)]).max() <= 2


def test_sixteen_bit_images_are_scaled_not_clipped():
    out = load_image(image_bytes("cat", (64, 48), fmt="PNG", mode="I;16"), 32)
    assert 0 < out.mean() < 250  # clipping would make nearly everything 255


@pytest.mark.parametrize(
    "data, why", [(b"", "empty"), (b"not an image at all", "cannot identify"), (image_bytes()[:200], "truncated")]
)
def test_undecodable_bytes_raise_bad_image(data, why):
    with pytest.raises(BadImage) as err:
        load_image(data, 32)
    assert why in str(err.value).lower() or why == "truncated"


def test_max_pixels_refuses_from_the_header_counting_jpeg_reduction():
    import io

    from PIL import Image

    def encoded(fmt, side):
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (90, 40, 200)).save(buf, fmt)
        return buf.getvalue()

    with pytest.raises(TooLarge) as refused:
        load_image(encoded("PNG", 3000), 48, max_pixels=1_000_000)
    assert refused.value.pixels == 9_000_000
    # libjpeg decodes a JPEG at 1/8 scale for a 48 px model: 375 x 375 pixels, not 3000 x 3000.
    assert load_image(encoded("JPEG", 3000), 48, max_pixels=150_000).shape == (48, 48, 3)
    with pytest.raises(TooLarge):
        load_image(encoded("JPEG", 3000), 48, max_pixels=140_000)
    assert load_image(encoded("PNG", 3000), 48, max_decode_bytes=1 << 30).shape == (48, 48, 3)


def test_a_photo_whose_decode_would_pass_the_memory_budget_is_refused_from_its_header():
    import io

    from PIL import Image

    from dogs_vs_cats.images import MAX_DECODE_BYTES, decode_bytes

    def png(mode, side):
        buf = io.BytesIO()
        Image.new(mode, (side, side)).save(buf, "PNG")
        return buf.getvalue()

    # The same 2,500 x 2,500 pixels: an RGB photo fits the default budget, a 16-bit or RGBA one does not.
    assert load_image(png("RGB", 2500), 32).shape == (32, 32, 3)
    for mode in ("I;16", "RGBA"):
        need = decode_bytes(mode, 2500, 2500)
        assert need > MAX_DECODE_BYTES
        with pytest.raises(TooLarge) as refused:
            load_image(png(mode, 2500), 32)
        assert refused.value.decode_bytes == need and "MiB a decode" in str(refused.value)
    with pytest.raises(TooLarge, match="the limit is 1,000,000 pixels"):
        load_image(png("L", 2000), 32, max_pixels=1_000_000)


def test_sixteen_bit_scaling_in_integers_equals_the_float_division():
    import io

    from PIL import Image

    values = np.array([[0, 1, 256, 257, 258, 32767, 65278, 65534, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")
    out = load_image(buf.getvalue(), values.shape[1])  # one row, stretched: each column keeps its value
    expected = np.clip(values / 257.0, 0, 255).astype(np.uint8)[0]
    assert (out[0, :, 0] == expected).all()


def test_prepare_skips_and_reports_bad_training_images_and_keeps_test_ids(tmp_path):
    bad = {
        "cat.100.jpg": b"",
        "dog.100.jpg": image_bytes()[:300],
        "cat.101.jpg": image_bytes("cat", fmt="PNG"),
        "dog.101.jpg": image_bytes("dog", fmt="GIF", mode="P", seed=9),
    }
    comp = make_competition(tmp_path / "comp", n_per_class=8, extra_train=bad, extra_test={"77.jpg": b"garbage"})
    (tmp_path / "params.yaml").write_text(
        f"data: {{source: {comp}}}\nsplit: {{n_train: 16, n_val: 2, n_holdout: 2}}\n"
        "prepare: {image_size: 32}\ntrain: {low_res_size: 0}\n"
    )
    for stage in ("download", "split", "prepare"):
        result = run_cli([stage], tmp_path)
        assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "metrics/prepare.json").read_text())
    # 10 cats and 10 dogs in all, all 20 selected: both broken ones reach prepare, whatever the seed.
    skipped = {s["file"] for key in ("train", "val", "holdout") for s in report["skipped"][key]}
    assert skipped == {"train/cat.100.jpg", "train/dog.100.jpg"}
    assert sum(report["images"][k] for k in ("train", "val", "holdout")) == 18
    assert report["skipped"]["test"] == [{"file": "test/77.jpg", "error": report["skipped"]["test"][0]["error"]}]
    assert report["warnings"] == len(skipped) + 1
    assert "warning(s)" in result.stderr and "skipping test.zip:test/77.jpg" in result.stderr
    assert report["images"]["test"] == 6
    # The PNG and the GIF named .jpg were decoded by their content, not skipped by their name.
    stored = {
        name.decode()
        for key in ("train", "val", "holdout")
        for _, _, name in read_records(tmp_path / f"data/prepared/{key}.tfrecord", 32).as_numpy_iterator()
    }
    assert {"train/cat.101.jpg", "train/dog.101.jpg"} <= stored and not stored & skipped


def test_a_record_writes_its_features_in_sorted_order_so_reruns_give_the_same_bytes(tmp_path):
    # protobuf orders a map's entries by a per-process hash unless asked to be deterministic;
    # without it, re-running prepare changed the TFRecords' bytes (and DVC retrained) at random.
    blob = record(bytes(range(12)), 1, "train/dog.7.jpg")
    positions = [blob.index(key) for key in (b"image", b"label", b"name")]
    assert positions == sorted(positions)
    import tensorflow as tf

    path = tmp_path / "one.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(blob)
    [(pixels, label, name)] = [(p.numpy(), int(l), n.numpy().decode()) for p, l, n in read_records(path, 2)]
    assert (pixels.tobytes(), label, name) == (bytes(range(12)), 1, "train/dog.7.jpg")


@pytest.mark.parametrize("which", ["train.zip", "test.zip"])
def test_an_archive_that_is_not_a_zip_is_refused_by_name(tmp_path, which):
    comp = make_competition(tmp_path / "comp")
    (comp / which).write_bytes(b"this is not a zip")
    (tmp_path / "params.yaml").write_text(f"data: {{source: {comp}}}\n")
    result = run_cli(["download"], tmp_path)
    assert result.returncode == 1
    assert f"{which}: not a complete zip archive" in result.stderr
    assert not (tmp_path / "data/raw").exists()


def test_a_zip_without_train_images_is_refused(tmp_path):
    comp = make_competition(tmp_path / "comp")
    with zipfile.ZipFile(comp / "train.zip", "w") as zf:
        zf.writestr("photos/readme.txt", "nothing here")
    (tmp_path / "params.yaml").write_text(f"data: {{source: {comp}}}\n")
    assert run_cli(["download"], tmp_path).returncode == 0
    result = run_cli(["split"], tmp_path)
    assert result.returncode == 1
    assert "holds no file named like train/cat.N.jpg" in result.stderr
    assert not (tmp_path / "data/split").exists()  # download keeps the archive; split writes nothing


def test_a_test_zip_without_test_images_is_refused(tmp_path):
    comp = make_competition(tmp_path / "comp", n_per_class=6)
    with zipfile.ZipFile(comp / "test.zip", "w") as zf:
        zf.writestr("other/readme.txt", "nothing here")
    (tmp_path / "params.yaml").write_text(
        f"data: {{source: {comp}}}\nsplit: {{n_train: 4, n_val: 4, n_holdout: 2}}\n"
        "prepare: {image_size: 32}\ntrain: {low_res_size: 0}\n"
    )
    for stage in ("download", "split"):
        assert run_cli([stage], tmp_path).returncode == 0
    result = run_cli(["prepare"], tmp_path)
    assert result.returncode == 1 and "test.zip: holds no file named like test/N.jpg" in result.stderr
    assert not (tmp_path / "data/prepared").exists() and not (tmp_path / "metrics/prepare.json").exists()
    assert not (tmp_path / "data/prepared/test.tfrecord").exists()
