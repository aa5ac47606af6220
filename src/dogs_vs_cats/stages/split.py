"""Stage `split`: a class-balanced, seeded, deterministic train/val/holdout split.

Labels come from Kaggle's file names (`train/cat.N.jpg`, `train/dog.N.jpg`; 1 = dog).
Each class is shuffled once with the seed and cut holdout first, then validation,
then training. So growing `n_train` adds training images without moving a single
validation or holdout image, and experiments stay comparable. The training list is
written in a seeded random order, so the stream `train` reads is mixed at any size.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ..common import UserError, log, write_csv
from ..params import Params
from ..paths import RAW, SETS, SPLIT

_NAME = re.compile(r"^(?:.*/)?(cat|dog)\.(\d+)\.jpe?g$", re.IGNORECASE)


def labelled_names(archive: Path) -> tuple[dict[int, list[str]], list[str]]:
    """Member names of train.zip by label, and the names that carry no label."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{archive}: not a zip archive ({exc}); run the download stage again") from None
    by_label: dict[int, list[tuple[int, str]]] = {0: [], 1: []}
    ignored = []
    for n in names:
        m = _NAME.match(n)
        if m is None:
            ignored.append(n)
            continue
        by_label[int(m.group(1).lower() == "dog")].append((int(m.group(2)), n))
    if not by_label[0] and not by_label[1]:
        raise UserError(
            f"{archive}: holds no file named like train/cat.N.jpg or train/dog.N.jpg; is this Kaggle's train.zip?"
        )
    return {k: [n for _, n in sorted(v)] for k, v in by_label.items()}, ignored


def _per_class(n: int) -> tuple[int, int]:
    """(cats, dogs) for a set of n images: balanced, the odd one a dog."""
    return n // 2, n - n // 2


def make_split(by_label: dict[int, list[str]], params: Params) -> dict[str, list[tuple[str, int]]]:
    s = params.split
    sizes = {"holdout": s.n_holdout, "val": s.n_val, "train": s.n_train}
    rng = np.random.default_rng(s.seed)
    out: dict[str, list[tuple[str, int]]] = {k: [] for k in SETS}
    for label in (0, 1):
        names = list(by_label[label])
        need = sum(_per_class(n)[label] for n in sizes.values())
        if need > len(names):
            kind = "dog" if label else "cat"
            have = len(by_label[0]) + len(by_label[1])
            raise UserError(
                f"params.yaml: split.n_train + split.n_val + split.n_holdout = {sum(sizes.values())} "
                f"needs {need} {kind} images but train.zip has {len(names)} ({have} labelled in all); "
                "lower split.n_train, split.n_val or split.n_holdout"
            )
        order = rng.permutation(len(names))
        start = 0
        for key in ("holdout", "val", "train"):
            k = _per_class(sizes[key])[label]
            out[key] += [(names[i], label) for i in order[start : start + k]]
            start += k
    for key in ("val", "holdout"):
        out[key].sort()
    # Training photos in a seeded random order, not sorted: prepare stores them as listed, and
    # train's shuffle buffer only mixes what lies within its reach, so a class-sorted file would
    # stream as one class at a time whenever the training set outgrows the buffer.
    train = sorted(out["train"])
    out["train"] = [train[i] for i in np.random.default_rng([s.seed, 1]).permutation(len(train))]
    return out


def run(params: Params) -> None:
    by_label, ignored = labelled_names(RAW / "train.zip")
    if ignored:
        log(
            f"split: warning: ignored {len(ignored)} file(s) in train.zip without a cat.N.jpg/dog.N.jpg "
            f"name, e.g. {ignored[0]}"
        )
    sets = make_split(by_label, params)
    for key in SETS:
        write_csv(SPLIT / f"{key}.csv", ["file", "label"], sets[key])
    log("split: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()) + f" -> {SPLIT}/")
