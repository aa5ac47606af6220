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
MAX_PIXELS = 40_000_000  # the default cap on a photo's decoded pixels (after libjpeg's reduction)
MAX_DECODE_BYTES = 64 << 20  # the default cap on the memory one decode may take, whatever the mode

# Bytes per pixel that decoding and converting a photo of each mode holds at its peak, as this module
# does it: Pillow stores 1, L and P in one byte a pixel, I;16 in two and every other mode in four; each
# conversion below holds its input and its output at once. tests/test_reliability.py measures a decode
# of each mode at the largest size its budget allows and checks the peak stays within the budget.
_PEAK_BYTES_PER_PIXEL = {"1": 6, "L": 6, "P": 6, "RGB": 9, "CMYK": 12, "YCbCr": 12, "I;16": 12, "I": 18, "F": 22}
_WITH_ALPHA = 24  # RGBA, LA, PA and P with transparency: composited on white, then RGB
_OTHER = 24


class BadImage(ValueError):
    """The bytes are not an image we can decode."""


class TooLarge(BadImage):
    """The image would decode to more pixels, or take more memory to decode, than allowed."""

    def __init__(self, pixels: int, decode_bytes: int, limit: str):
        super().__init__(f"decodes to {pixels:,} pixels, needing {decode_bytes >> 20:,} MiB: {limit}")
        self.pixels, self.decode_bytes, self.limit = pixels, decode_bytes, limit


def decode_bytes(mode: str, width: int, height: int, transparency: bool = False) -> int:
    """The memory `load_image` takes at its peak for a photo of this mode and decoded size."""
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and transparency):
        per_pixel = _WITH_ALPHA
    elif mode.startswith("I;16"):
        per_pixel = _PEAK_BYTES_PER_PIXEL["I;16"]
    else:
        per_pixel = _PEAK_BYTES_PER_PIXEL.get(mode, _OTHER)
    return per_pixel * width * height


def load_image(
    data: bytes, size: int, max_pixels: int = MAX_PIXELS, max_decode_bytes: int = MAX_DECODE_BYTES
) -> np.ndarray:
    """Decode JPEG/PNG/GIF/... bytes of any mode into a (size, size, 3) uint8 RGB array.

    The whole photo is squashed to a square rather than centre-cropped: in this data
    set the animal is often off-centre, and a crop would cut it off. An image that would decode
    to more than `max_pixels` pixels (after libjpeg's reduction), or whose decode would take more
    than `max_decode_bytes` of memory in its mode (16-bit, RGBA and float photos take several
    times an RGB one's), raises TooLarge from its header, before a pixel is decoded: a small PNG
    can claim 100 megapixels of one colour.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            # Let libjpeg decode at reduced scale: several times faster for big photos.
            img.draft("RGB", (size, size))
            pixels = img.width * img.height
            need = decode_bytes(img.mode, img.width, img.height, "transparency" in img.info)
            if pixels > max_pixels:
                raise TooLarge(pixels, need, f"the limit is {max_pixels:,} pixels")
            if need > max_decode_bytes:
                raise TooLarge(pixels, need, f"the limit is {max_decode_bytes >> 20:,} MiB a decode")
            img = ImageOps.exif_transpose(img)
            img.load()
    except TooLarge:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(str(exc) or type(exc).__name__) from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # convert("RGB") would clip 16-bit values at 255; scale them down instead, in integers and in
        # place (floor(v / 257), as a float division would give, at a fraction of the memory).
        arr = np.array(img, dtype=np.int32 if img.mode == "I" else np.uint16)
        np.floor_divide(arr, 257, out=arr)
        np.clip(arr, 0, 255, out=arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
        del arr
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":  # an RGB photo is resized as it is: no full-size copy
        img = img.convert("RGB")
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
