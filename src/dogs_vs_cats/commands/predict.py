"""`dogs-vs-cats predict`: P(dog) for image files, from a Keras or a TFLite model, written as CSV.

A `.tflite` model needs only a LiteRT interpreter, never TensorFlow (inference.py), so a
Raspberry Pi runs this command with numpy, Pillow and LiteRT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common import UserError, log, write_csv
from ..images import BadImage, load_image
from ..inference import Predictor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def _expand(inputs: list[str]) -> list[tuple[Path, bool]]:
    """(file, given_directly) for every file named or found in a named directory."""
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                log(f"predict: warning: {p} holds no image files")
            files += [(f, False) for f in found]
        elif p.is_file():
            files.append((p, True))
        else:
            raise UserError(f"{p}: no such file or directory; give image files or folders of images")
    return files


def run(*, model: str, inputs: list[str], out: str, batch_size: int = 32) -> None:
    predictor = Predictor(model)
    files = _expand(inputs)
    rows, skipped = [], 0
    batch, names = [], []

    def flush():
        if batch:
            for name, p in zip(names, predictor.p_dog(np.stack(batch))):
                rows.append((name, f"{p:.6f}"))
            batch.clear()
            names.clear()

    for path, direct in files:
        try:
            image = load_image(path.read_bytes(), predictor.image_size)
        except (BadImage, OSError) as exc:
            if direct:
                raise UserError(f"{path}: not a decodable image ({exc}); give a JPEG or PNG file") from None
            skipped += 1
            log(f"predict: warning: skipping {path}: not a decodable image ({exc})")
            continue
        batch.append(image)
        names.append(str(path))
        if len(batch) == batch_size:
            flush()
    flush()
    write_csv(out, ["file", "p_dog"], rows)
    log(f"predict: {len(rows)} image(s) -> {out}" + (f", {skipped} skipped" if skipped else ""))
