"""Stage `prepare`: decode every selected image once, resize it, and store it for streaming.

Each split becomes one TFRecord file of raw uint8 pixels at `prepare.image_size`, so
training reads sequentially and never decodes a JPEG again: the cores go to the
model instead of to ImageDataGenerator-style re-decoding. Records stream from disk,
so memory stays flat however large the competition is.

Images are decoded by `images.load_image`, as predict and serve decode them.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import re
import time
import zipfile
from pathlib import Path

from ..common import Progress, UserError, atomic_path, log, write_json
from ..images import BadImage, load_image
from ..params import Params
from ..paths import PREPARE_REPORT, RAW, SETS, SPLIT, prepared
from ..records import record

_TEST_NAME = re.compile(r"^(?:.*/)?(\d+)\.jpe?g$", re.IGNORECASE)


def _selected() -> dict[str, list[tuple[str, int]]]:
    sets = {}
    for key in SETS:
        path = SPLIT / f"{key}.csv"
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
            n, skipped, rate = write_records(pool, archive, items, size, prepared(key), key)
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
    write_json(PREPARE_REPORT, report)
    log(
        f"prepare: {total} images in {elapsed:.1f}s ({report['images_per_s']:.0f} img/s on {workers} workers), "
        f"{n_skipped} warning(s); report in {PREPARE_REPORT}"
    )
