"""Small helpers every stage needs: the user-facing error type, atomic writes, progress, the CPU, scores."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Every probability is clipped to [P_FLOOR, 1 - P_FLOOR] before its log is taken: one floor for scores,
# calibration and the ensemble's log-odds, so they agree.
P_FLOOR = 1e-7

# The CPU flags of native bf16 arithmetic (AVX-512 BF16, AMX): where mixed_bfloat16 pays.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags from /proc/cpuinfo ("unknown CPU" and none where it is missing)."""
    name, flags = "unknown CPU", frozenset()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
    except OSError:
        pass
    return name, flags


class UserError(Exception):
    """An error the user can fix; the CLI prints it as one line and exits 1."""


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path beside `path`; rename it over `path` only on success.

    A crash, kill or exception leaves the old file (or none), never a half-written one
    that DVC would then cache as a valid output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix if suffix is not None else ".tmp"
    )
    os.close(fd)
    # mkstemp makes owner-only files; give outputs the permissions any new file would get.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, header: list[str], rows) -> None:
    import csv

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """A one-line progress counter on stderr, throttled so logs stay readable."""

    def __init__(self, total: int, what: str, every_s: float = 2.0):
        self.total, self.what, self.every_s = total, what, every_s
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            log(f"  {self.what}: {self.done}/{self.total} ({rate:.0f}/s)")

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-9)


def scores(p, y) -> dict:
    """Accuracy, log loss and ROC AUC of P(dog) `p` against labels `y` (1 = dog), as every report gives them.

    Free of TensorFlow, so benchmarks on other Keras backends score exactly as the evaluate stage does.
    """
    import numpy as np
    from sklearn import metrics as skm

    p, y = np.asarray(p, dtype=np.float64), np.asarray(y)
    both = len(set(y.tolist())) == 2
    return {
        "images": int(len(y)),
        "accuracy": round(float(np.mean((p >= 0.5) == (y == 1))), 4),
        "log_loss": round(float(skm.log_loss(y, np.clip(p, P_FLOOR, 1 - P_FLOOR), labels=[0, 1])), 4),
        "roc_auc": round(float(skm.roc_auc_score(y, p)), 4) if both else None,
    }
