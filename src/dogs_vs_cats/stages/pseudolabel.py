"""Stage `pseudolabel`: the teacher labels the competition's test photos, for the student to learn from.

Kaggle's test photos carry no labels, and a model may learn from them as long as nobody labels
them by hand. The teacher (the `train` stage's model) gives each its calibrated P(dog); a photo
it is at least `unlabelled.threshold` sure of, either way, is kept with the teacher's answer as
its label. The student's store is then the labelled training photos and the kept test photos,
shuffled together, so no batch is all of one source.

Only the prepared training and test photos are read: never validation or holdout, never a
solution file, and a test photo's own label field (always -1) is ignored. With `unlabelled`
off nothing is predicted, and the store and label list are left empty.
"""

from __future__ import annotations

import numpy as np

from ..common import UserError, atomic_path, log, write_csv, write_json
from ..params import Params
from ..paths import PSEUDO_LABELS, STUDENT_RECORDS, TEACHER, UNLABELLED_METRICS, prepared
from ..records import read_records, record


def choose(p_dog: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept, label) per photo: kept where the teacher is at least `threshold` sure, label 1 = dog."""
    p_dog = np.asarray(p_dog, dtype=np.float64)
    return np.maximum(p_dog, 1 - p_dog) >= threshold, (p_dog >= 0.5).astype(int)


def write_store(path, labelled: list[bytes], pseudo: list[bytes], seed: int) -> None:
    """Both lists of serialized records in one seeded random order, written atomically."""
    import tensorflow as tf

    everything = labelled + pseudo
    order = np.random.default_rng(seed).permutation(len(everything))
    with atomic_path(path, suffix=".tfrecord") as tmp:
        with tf.io.TFRecordWriter(str(tmp)) as w:
            for i in order:
                w.write(everything[i])


def run(params: Params) -> None:
    u = params.unlabelled
    size = params.prepare.image_size
    if not u.enabled:
        write_csv(PSEUDO_LABELS, ["name", "p_dog", "label", "kept"], [])
        write_store(STUDENT_RECORDS, [], [], params.train.seed)
        write_json(UNLABELLED_METRICS, {"test_photos": 0})
        log("pseudolabel: unlabelled.enabled is false; the test photos are not used")
        return

    import tensorflow as tf

    from ..inference import Predictor, predict_records

    log(f"pseudolabel: the teacher ({TEACHER}) labels {prepared('test')}")
    p_dog, _, names = predict_records(Predictor(TEACHER), prepared("test"))  # the -1 labels are not read
    if not len(names):
        raise UserError(f"{prepared('test')}: holds no photos; run `dvc repro prepare` again")
    kept, label = choose(p_dog, u.threshold)
    pseudo = []
    for i, (pixels, _, _) in enumerate(read_records(prepared("test"), size).as_numpy_iterator()):
        if kept[i]:
            pseudo.append(record(pixels.tobytes(), int(label[i]), names[i]))
    labelled = [bytes(r) for r in tf.data.TFRecordDataset(str(prepared("train"))).as_numpy_iterator()]
    write_store(STUDENT_RECORDS, labelled, pseudo, params.train.seed)
    write_csv(
        PSEUDO_LABELS,
        ["name", "p_dog", "label", "kept"],
        [(n, f"{p:.6f}", int(y), int(k)) for n, p, y, k in zip(names, p_dog, label, kept)],
    )
    n_kept = int(kept.sum())
    write_json(
        UNLABELLED_METRICS,
        # One column in `dvc metrics show`: how many test photos the student learns from (0 = off). How they
        # were chosen is in params.yaml (`dvc params diff`); every photo's P(dog) and whether it was kept in labels.csv.
        {"test_photos": n_kept},
    )
    log(
        f"pseudolabel: {n_kept} of {len(names)} test photos kept at confidence >= {u.threshold} "
        f"({int(label[kept].sum())} dogs); the student learns from them and {len(labelled)} labelled photos"
    )
