"""Stage `submission`: `data/submission.csv` in Kaggle's format, checked before it is written.

Kaggle scores log loss, where one confident mistake costs more than many right
answers earn, so probabilities are clipped to [clip, 1 - clip]. A test image that
could not be decoded still gets its row (p = 0.5): Kaggle rejects a file with an id
missing.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .common import UserError, atomic_path, log, write_csv
from .params import Params
from .paths import MODEL, RAW, SUBMISSION, prepared


def read_ids(path: Path) -> list[int]:
    """The ids of a Kaggle-style `id,label` file, in file order."""
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["id", "label"]:
                raise UserError(f"{path}: header must be 'id,label', found {header}; is this a Kaggle submission file?")
            return [int(row[0]) for row in reader if row]
    except (ValueError, IndexError):
        raise UserError(f"{path}: every row must start with an integer id; is this a Kaggle submission file?") from None
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run `dvc repro download`") from None


def check(path: Path, sample: Path, shown: Path | None = None) -> int:
    """Validate a submission the way Kaggle would; return its row count or raise one clear line.

    `shown` is the name errors use when `path` is a temporary file about to become it.
    """
    expected = read_ids(sample)
    real_path, path = path, shown or path
    ids, labels = [], []
    try:
        with open(real_path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != ["id", "label"]:
                raise UserError(f"{path}: header must be exactly 'id,label', found {header}")
            for lineno, row in enumerate(reader, start=2):
                if len(row) != 2:
                    raise UserError(f"{path}: line {lineno} must have 2 fields (id,label), has {len(row)}")
                try:
                    ids.append(int(row[0]))
                    label = float(row[1])
                except ValueError:
                    raise UserError(
                        f"{path}: line {lineno}: id must be an integer and label a number, got {row}"
                    ) from None
                if math.isnan(label) or not 0.0 <= label <= 1.0:
                    raise UserError(f"{path}: line {lineno}: label {row[1]} must be a probability in [0, 1]")
                labels.append(label)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run `dvc repro submission` first") from None
    if len(ids) != len(expected) or sorted(ids) != sorted(expected):
        missing = sorted(set(expected) - set(ids))[:3]
        extra = sorted(set(ids) - set(expected))[:3]
        raise UserError(
            f"{path}: has {len(ids)} rows, {sample.name} has {len(expected)}; ids missing {missing}, "
            f"unexpected {extra}; regenerate it with `dvc repro submission`"
        )
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: some ids appear twice; regenerate it with `dvc repro submission`")
    return len(ids)


def run(params: Params) -> None:
    # Imported here so that `submit`, which only needs `check`, starts without TensorFlow.
    from .predict import Predictor, predict_records

    predictor = Predictor(MODEL)
    p, _, names = predict_records(predictor, prepared("test"))
    by_id = {int(Path(n).stem): float(x) for n, x in zip(names, p)}
    sample = RAW / "sample_submission.csv"
    ids = sorted(read_ids(sample))
    missing = [i for i in ids if i not in by_id]
    if missing:
        log(f"submission: warning: {len(missing)} test image(s) undecodable, given p = 0.5: {missing[:10]}")
    clip = params.submission.clip
    rows = [(i, f"{np.clip(by_id.get(i, 0.5), clip, 1 - clip):.6f}") for i in ids]
    with atomic_path(SUBMISSION) as tmp:
        write_csv(tmp, ["id", "label"], rows)
        check(tmp, sample, shown=SUBMISSION)  # a file Kaggle would reject never replaces the last good one
    log(f"submission: {len(rows)} rows -> {SUBMISSION} (clipped to [{clip}, {1 - clip}])")
