"""Kaggle's submission file, `id,label`: its ids read, and a whole file checked as Kaggle would.

The submission stage checks what it writes; the `submit` command checks again before uploading.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .common import UserError


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
