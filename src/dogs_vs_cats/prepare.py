"""Stage `prepare`: decode every selected image once, resize it, and store it for streaming.

Each split becomes one TFRecord file of raw uint8 pixels at `prepare.image_size`, so
training reads sequentially and never decodes a JPEG again: the two cores go to the
model instead of to ImageDataGenerator-style re-decoding. Records stream from disk,
so memory stays flat however large the competition is.

`load_image` is the single definition of "an image as the model sees it"; predict and
serve call it too, so training and inference can never drift apart.
"""
from __future__ import annotations

import csv
import io
import multiprocessing as mp
import os
import re
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .common import Progress, UserError, atomic_path, log, write_json
from .download import RAW
from .params import Params
from .split import OUT as SPLIT_DIR, SETS

OUT = Path("data/prepared")
REPORT = Path("metrics/prepare.json")
_TEST_NAME = re.compile(r"^(?:.*/)?(\d+)\.jpe?g$", re.IGNORECASE)

# Photos are small; a decompression bomb is not a photo.
Image.MAX_IMAGE_PIXELS = 64_000_000


class BadImage(ValueError):
    """The bytes are not an image we can decode."""


def load_image(data: bytes, size: int) -> np.ndarray:
    """Decode JPEG/PNG/GIF/... bytes of any mode into a (size, size, 3) uint8 RGB array.

    The whole photo is squashed to a square rather than centre-cropped: in this data
    set the animal is often off-centre, and a crop would cut it off.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            # Let libjpeg decode at reduced scale: several times faster for big photos.
            img.draft("RGB", (size, size))
            img = ImageOps.exif_transpose(img)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(str(exc) or type(exc).__name__) from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # convert("RGB") would clip 16-bit values at 255; scale them down instead.
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _selected() -> dict[str, list[tuple[str, int]]]:
    sets = {}
    for key in SETS:
        path = SPLIT_DIR / f"{key}.csv"
        with open(path, newline="") as f:
            sets[key] = [(row["file"], int(row["label"])) for row in csv.DictReader(f)]
    return sets


def _test_members(archive: Path) -> list[tuple[str, int]]:
    """test.zip members sorted by numeric id; label -1 (unknown)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{archive}: not a zip archive ({exc}); run the download stage again") from None
    found = []
    for n in names:
        m = _TEST_NAME.match(n)
        if m:
            found.append((int(m.group(1)), n))
    if not found:
        raise UserError(f"{archive}: holds no file named like test/N.jpg; is this Kaggle's test.zip?")
    return [(n, -1) for _, n in sorted(found)]


# Each worker opens each archive once and decodes the members it is handed.
_zips: dict[str, zipfile.ZipFile] = {}


def _decode(job: tuple[str, str, int, int]):
    archive, name, label, size = job
    try:
        zf = _zips.get(archive)
        if zf is None:
            zf = _zips[archive] = zipfile.ZipFile(archive)
        return name, label, load_image(zf.read(name), size).tobytes(), None
    except (BadImage, KeyError, zipfile.BadZipFile, OSError, EOFError) as exc:
        return name, label, None, str(exc) or type(exc).__name__


def _ready():
    """Runs in each new worker; unpickling it already imported this module and PIL."""


def decode_pool(workers: int):
    """Decoder processes, started and ready.

    spawn, not fork: forking a process that has loaded TensorFlow's thread pools can
    hang. Each worker imports its modules while the parent imports TensorFlow, and
    the throughput clock only starts once both are done.
    """
    import tensorflow  # noqa: F401  (write_records needs it; importing it later would idle the workers)

    pool = mp.get_context("spawn").Pool(workers, initializer=_ready)
    pool.map(abs, range(workers * 4), chunksize=1)
    return pool


def record(pixels: bytes, label: int, name: str) -> bytes:
    """One prepared image as a serialized tf.train.Example: the format `read_records` parses.

    Serialized deterministically: protobuf writes a map's entries in an order that can
    change from one process to the next, so without it the same images give different
    bytes, and DVC would see new prepared data (and retrain) after every re-run.
    """
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
    })).SerializeToString(deterministic=True)


def count_records(path: Path) -> int:
    """How many images a prepared file holds (records are counted, not decoded)."""
    import tensorflow as tf

    if not Path(path).is_file():
        raise UserError(f"{path}: missing; run `dvc repro prepare` first")
    return int(tf.data.TFRecordDataset(str(path)).reduce(0, lambda n, _: n + 1))


def write_records(pool, archive: Path, items, size: int, out: Path, what: str):
    """Decode `items` from `archive` on the pool's processes and write them, in order, as TFRecords."""
    import tensorflow as tf

    skipped = []
    progress = Progress(len(items), f"prepare {what}")
    jobs = [(str(archive), name, label, size) for name, label in items]
    with atomic_path(out) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for name, label, pixels, err in pool.imap(_decode, jobs, chunksize=16):
            progress.update()
            if pixels is None:
                skipped.append({"file": name, "error": err})
                log(f"prepare: warning: skipping {archive.name}:{name}: {err}")
                continue
            writer.write(record(pixels, label, name))
        writer.flush()
    return len(items) - len(skipped), skipped, progress.rate


def read_records(path: Path, size: int):
    """The prepared store as a streaming tf.data.Dataset of (uint8 image, label, name)."""
    import tensorflow as tf

    if not Path(path).is_file():
        raise UserError(f"{path}: missing; run `dvc repro prepare` first")
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "name": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        image = tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), (size, size, 3))
        return image, tf.cast(ex["label"], tf.int32), ex["name"]

    return tf.data.TFRecordDataset(str(path), buffer_size=8 << 20).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE
    )


def run(params: Params) -> None:
    size = params.prepare.image_size
    workers = params.prepare.workers or os.cpu_count() or 1
    jobs = {key: (RAW / "train.zip", items) for key, items in _selected().items()}
    jobs["test"] = (RAW / "test.zip", _test_members(RAW / "test.zip"))
    report = {"image_size": size, "workers": workers, "images": {}, "skipped": {}}
    total = 0
    with decode_pool(workers) as pool:
        start = time.monotonic()  # decode-and-write throughput: process start-up and imports are not counted
        for key, (archive, items) in jobs.items():
            n, skipped, rate = write_records(pool, archive, items, size, OUT / f"{key}.tfrecord", key)
            report["images"][key] = n
            report["skipped"][key] = skipped
            total += len(items)
            log(f"prepare: {key}: {n} images at {size}x{size} ({rate:.0f} img/s), {len(skipped)} skipped")
    elapsed = time.monotonic() - start
    report["images_per_s"] = round(total / elapsed, 1)
    n_skipped = sum(len(v) for v in report["skipped"].values())
    report["warnings"] = n_skipped
    for key in SETS:
        if report["images"][key] == 0 and len(jobs[key][1]) > 0:
            raise UserError(f"{RAW / 'train.zip'}: none of the {key} images could be decoded; download it again")
    write_json(REPORT, report)
    log(
        f"prepare: {total} images in {elapsed:.1f}s ({report['images_per_s']:.0f} img/s on {workers} workers), "
        f"{n_skipped} warning(s); report in {REPORT}"
    )
