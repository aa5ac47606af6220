"""Stage `submission`: `data/submission.csv` in Kaggle's format, checked before it is written.

Kaggle scores log loss, where one confident mistake costs more than many right
answers earn, so probabilities are clipped to [clip, 1 - clip]. A test image that
could not be decoded still gets its row (p = 0.5): Kaggle rejects a file with an id
missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common import atomic_path, log, write_csv
from ..params import Params
from ..paths import MODEL, RAW, SUBMISSION, prepared
from ..submission_file import check, read_ids


def run(params: Params) -> None:
    write(params, MODEL, SUBMISSION)


def write(params: Params, model: Path, out: Path) -> None:
    """`model`'s answers for every test photo as Kaggle's checked `id,label` file `out`."""
    # Imported here so that `submit`, which only needs `check`, starts without TensorFlow.
    from ..inference import Predictor, predict_records

    predictor = Predictor(model)
    p, _, names = predict_records(predictor, prepared("test"))
    by_id = {int(Path(n).stem): float(x) for n, x in zip(names, p)}
    sample = RAW / "sample_submission.csv"
    ids = sorted(read_ids(sample))
    missing = [i for i in ids if i not in by_id]
    if missing:
        log(f"submission: warning: {len(missing)} test image(s) undecodable, given p = 0.5: {missing[:10]}")
    clip = params.submission.clip
    rows = [(i, f"{np.clip(by_id.get(i, 0.5), clip, 1 - clip):.6f}") for i in ids]
    with atomic_path(out) as tmp:
        write_csv(tmp, ["id", "label"], rows)
        check(tmp, sample, shown=out)  # a file Kaggle would reject never replaces the last good one
    log(f"submission: {len(rows)} rows -> {out} (clipped to [{clip}, {1 - clip}])")
