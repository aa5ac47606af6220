"""An image as the model sees it: the one decoder that `prepare`, `predict` and `serve` share.

Free of TensorFlow on purpose: a Raspberry Pi runs `predict` and `serve` with numpy,
Pillow and a LiteRT interpreter only. Sharing one definition means training and
inference can never drift apart.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Photos are small; a decompression bomb is not a photo.
Image.MAX_IMAGE_PIXELS = 64_000_000


class BadImage(ValueError):
    """The bytes are not an image we can decode."""


class TooLarge(BadImage):
    """The image would decode to more than the pixels allowed."""

    def __init__(self, pixels: int):
        super().__init__(f"decodes to {pixels:,} pixels")
        self.pixels = pixels


def load_image(data: bytes, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG/GIF/... bytes of any mode into a (size, size, 3) uint8 RGB array.

    The whole photo is squashed to a square rather than centre-cropped: in this data
    set the animal is often off-centre, and a crop would cut it off. With `max_pixels`, an
    image that would decode to more pixels (after libjpeg's reduction) raises TooLarge from
    its header, before a pixel is decoded: a small PNG can claim 100 megapixels of one colour.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            # Let libjpeg decode at reduced scale: several times faster for big photos.
            img.draft("RGB", (size, size))
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise TooLarge(img.width * img.height)
            img = ImageOps.exif_transpose(img)
            img.load()
    except TooLarge:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(str(exc) or type(exc).__name__) from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # convert("RGB") would clip 16-bit values at 255; scale them down instead.
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
