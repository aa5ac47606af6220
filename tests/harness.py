"""The tests' own helpers: tiny generated photos and competitions, free ports, tiny training
projects and the CLI run in a project. What the benches share with the tests (a project copy, its
environment, param overrides, the fake Kaggle server, the load mix for `serve`) is bench/benchlib.py,
re-exported here; bench/ never imports from tests/.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from benchlib import (  # noqa: E402, F401  (re-exported for the tests)
    BIN,
    EXPECTED_STATUS,
    HOSTILE,
    ROOT,
    SHARED_COMPETITION,
    TINY,
    bomb_png,
    copy_project,
    fake_kaggle_for,
    free_ports,
    hostile_bodies,
    load_mix,
    post,
    project_env,
    run_group,
    set_params,
    stalled_post,
    train_workers,
    with_overrides,
)


def image_bytes(kind: str = "cat", size=(40, 30), fmt: str = "JPEG", mode: str = "RGB", seed: int = 0) -> bytes:
    """A small synthetic photo: cats are reddish with a disc, dogs bluish with a bar."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    if kind == "cat":
        arr[..., 0] += 150
        arr[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(w, h) / 4) ** 2] = 250
    else:
        arr[..., 2] += 150
        arr[h // 3 : 2 * h // 3, :] = 10
    img = Image.fromarray(arr, "RGB")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
        assert img.mode.startswith("I;16")
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def make_competition(
    folder: Path,
    n_per_class: int = 12,
    n_test: int = 6,
    extra_train: dict | None = None,
    extra_test: dict | None = None,
) -> Path:
    """A tiny competition folder laid out like Kaggle's: train.zip, test.zip, sample_submission.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "train.zip", "w") as zf:
        for i in range(n_per_class):
            for kind in ("cat", "dog"):
                zf.writestr(f"train/{kind}.{i}.jpg", image_bytes(kind, seed=i))
        for name, data in (extra_train or {}).items():
            zf.writestr(f"train/{name}", data)
    ids = list(range(1, n_test + 1))
    with zipfile.ZipFile(folder / "test.zip", "w") as zf:
        for i in ids:
            zf.writestr(f"test/{i}.jpg", image_bytes("cat" if i % 2 else "dog", seed=100 + i))
        for name, data in (extra_test or {}).items():
            zf.writestr(f"test/{name}", data)
            ids.append(int(Path(name).stem))
    (folder / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0.5\n" for i in sorted(ids)))
    return folder


def tiny_project(tmp_path: Path, n_test: int, stages: tuple[str, ...], **settings) -> Path:
    """A project copy on a tiny generated competition (TINY, then `settings`), run through `stages`."""
    comp = make_competition(tmp_path / "comp", n_per_class=30, n_test=n_test)
    project = copy_project(tmp_path / "project")
    set_params(project, **{"data.source": str(comp), **TINY, **settings})
    for stage in stages:
        result = run_cli([stage], project)
        assert result.returncode == 0, f"{stage}: {result.stderr}"
    return project


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600):
    return subprocess.run(
        [str(BIN / "dogs-vs-cats"), *args],
        cwd=cwd,
        env=env or project_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
