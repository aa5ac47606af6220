"""The prepared store: one TFRecord file per set, each record an image's raw uint8 pixels.

`prepare` writes it; `train`, `student` (the test photos too), `evaluate`,
`submission` and `export` stream it. The format lives here, apart from any stage, so a reader
never imports the stage that wrote it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .common import UserError


def record(pixels: bytes, label: int, name: str) -> bytes:
    """One prepared image as a serialized tf.train.Example: the format `read_records` parses.

    Serialized deterministically: protobuf writes a map's entries in an order that can
    change from one process to the next, so without it the same images give different
    bytes, and DVC would see new prepared data (and retrain) after every re-run.
    """
    import tensorflow as tf

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
            }
        )
    ).SerializeToString(deterministic=True)


def count_records(path: Path) -> int:
    """How many images a prepared file holds (records are counted, not decoded; once per version of the file)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: missing; run `dvc repro prepare` first")
    st = Path(path).stat()
    return _count(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _count(path: str, size: int, mtime_ns: int) -> int:
    """Counting reads the whole file: a learner asks for its epoch's size more than once."""
    import tensorflow as tf

    return int(tf.data.TFRecordDataset(path).reduce(0, lambda n, _: n + 1))


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

    return tf.data.TFRecordDataset(str(path), buffer_size=8 << 20).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
