"""A tiny pixel signature of each image: the data audit's copy check beside the
backbone's cosine similarity. Pillow + numpy, no TensorFlow.

Backbone vectors of small images do not tell a shrunk, re-encoded copy (cosine
0.78-0.96 with its original) from a different image of one design (clock
faces above 0.95); a 64-bit DCT hash did not either (colour variants of one
emoji hash alike, different clock faces and Fashion-MNIST trousers within 6
bits). What did, on both benchmark datasets (benchmarks/audit_quality.py): the
RMS difference of 16 x 16 grey thumbnails (the layout, clock hands included)
and of 8 x 8 colour thumbnails (the colours), both in 0..255 units.

The signature is a 16 x 16 RGB thumbnail (768 bytes): pixels as the pipeline
sees them (image_io.to_rgb: EXIF rotation, transparency on white), squeezed to
a square (antialiased box filter, aspect ratio not kept, as the backbone's
resize). JPEGs decode at a reduced scale (Pillow's draft mode, in the DCT
domain), so a 12 MP photo costs milliseconds, not a full decode.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import Image

from components import image_io

SIDE = 16                    # the thumbnail's side
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
DIM = SIDE * SIDE * 3


def signature(data: bytes, max_pixels: int = image_io.DEFAULT_MAX_PIXELS) -> Optional[np.ndarray]:
    """uint8 [DIM] thumbnail of one encoded image, or None when it cannot be
    decoded or holds more than max_pixels (such an image gets no pixel check)."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            return None
        img.draft("RGB", (SIDE * 4, SIDE * 4))  # JPEG only: scale down in the DCT domain
        return thumbnail(img)
    except Exception:  # noqa: BLE001 - Pillow raises many types on bad data
        return None


def thumbnail(img: Image.Image) -> np.ndarray:
    """The signature of an opened image (``signature`` without the decode)."""
    thumb = image_io.to_rgb(img).resize((SIDE, SIDE), Image.BOX)
    return np.asarray(thumb, dtype=np.uint8).reshape(-1)


def of_decoded(decoded: image_io.DecodedImage) -> Optional[np.ndarray]:
    """``signature(decoded.data)``, from the pixels ``image_io.decode`` already loaded
    where they are the ones ``signature`` would decode: a re-encoded image's RGB pixels
    (the PNG holds exactly them) or a kept PNG's. A kept JPEG decodes again, at the
    reduced scale ``signature`` uses (a full decode gives other thumbnail pixels)."""
    if decoded.pixels is None or decoded.source_format == "JPEG" and not decoded.reencoded:
        return signature(decoded.data)
    try:
        return thumbnail(decoded.pixels)
    except Exception:  # noqa: BLE001 - as signature()
        return None


def to_feature(sig: Optional[np.ndarray]) -> bytes:
    """The Example feature (contracts.PIXEL_SIGNATURE_KEY) of a signature; b"" for none."""
    return b"" if sig is None else np.asarray(sig, np.uint8).tobytes()


def from_feature(value: bytes) -> Optional[np.ndarray]:
    """The signature a feature holds; None when it holds none (or not DIM bytes)."""
    return np.frombuffer(value, np.uint8).copy() if len(value) == DIM else None


def views(signatures: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    """([N, 256] grey 16 x 16, [N, 192] colour 8 x 8) float32 from [N, DIM] signatures."""
    rgb = np.asarray(signatures, dtype=np.float32).reshape(-1, SIDE, SIDE, 3)
    grey = (rgb @ GREY_WEIGHTS).reshape(len(rgb), -1)
    half = SIDE // 2
    colour = rgb.reshape(-1, half, 2, half, 2, 3).mean(axis=(2, 4)).reshape(len(rgb), -1)
    return grey, colour


def rms_block(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] RMS differences of rows, by one matrix product:
    |a - b|^2 = |a|^2 + |b|^2 - 2 a.b (b_sq: the rows of b squared and summed)."""
    sq = (a * a).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0) / a.shape[1])
