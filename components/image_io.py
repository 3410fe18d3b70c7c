"""Finding, checking and normalising image files (pure Python + Pillow, no TF).

Shared by the ExampleGen executor and the `retrain predict` path, so training
and serving see an image through the same rules:

* Files are found as ``<root>/<label>/<any depth>/<file>``. Hidden files and
  folders (leading ``.``) and unknown extensions are skipped with a reason.
* Reading is bounded: a file's size is checked against ``max_file_bytes``
  with a stat *before* it is read, and the read stops there anyway.
* Decoding is bounded: the pixel count is read from the header and checked
  against ``max_pixels`` *before* any pixel buffer is allocated; an image
  under ``min_side`` pixels on its short side is refused (nothing to learn).
* A file symlink inside a class folder is followed only when its target
  resolves inside the images root (unless ``follow_external_symlinks``).
* A class folder without any image file is reported, not fatal.
* What gets stored ("canonical bytes") is what TensorFlow's decoder in the
  Transform graph will decode to exactly the pixels Pillow saw: plain RGB/grey
  JPEGs and 8-bit PNGs are kept byte-for-byte; anything TF would decode
  differently (EXIF-rotated or CMYK JPEG, GIF/BMP/WebP/TIFF, 16-bit or palette
  PNG) is converted here and re-encoded as a lossless RGB PNG.
* Transparency is composited on white (``BACKGROUND``), here for re-encoded
  images and in the Transform graph for kept PNGs, with the same formula.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import unicodedata
from typing import Iterator, Optional, Sequence

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from components import contracts

# Refuse to guess at truncated files: a half-synced image must be skipped, not
# silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

BACKGROUND = (255, 255, 255)
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 50_000_000  # 50 MP: above any phone photo, below a bomb.
# 50 MB: a 50 MP PNG photo is ~40 MB; a larger file is a mistake or an attack,
# and reading it whole costs its size in memory several times over.
DEFAULT_MAX_FILE_BYTES = 50_000_000
# 16 px on the short side: smaller is an icon or a tracking pixel, upscaled to
# the backbone's input it is blur, not a photo of the class.
DEFAULT_MIN_IMAGE_SIDE = 16
_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A file found under the images root."""
    path: str        # absolute path or URI
    relpath: str     # path relative to the root, '/'-separated
    label: str       # top-level folder name


@dataclasses.dataclass(frozen=True)
class Skipped:
    relpath: str
    reason: str
    label: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    data: bytes      # canonical bytes (JPEG or PNG)
    width: int
    height: int
    source_format: str
    reencoded: bool
    # The loaded pixels: the original image when kept, the RGB image `data` encodes
    # when re-encoded (components/pixel_signature.of_decoded reuses them).
    pixels: Optional[Image.Image] = dataclasses.field(default=None, compare=False, repr=False)


class ImageRejected(ValueError):
    """The file is not an image we can use; the message is the reason."""


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def label_problem(label: str) -> Optional[str]:
    """Why `label` can't be a class name (it ends up in labels.txt lines), or None."""
    if not label or not label.strip():
        return "empty class name"
    if label != label.strip():
        return f"class name {label!r} has leading or trailing spaces"
    breaks = sorted({f"U+{ord(ch):04X}" for ch in label if ch in contracts.LINE_BREAKS})
    if breaks:  # labels.txt holds one name a line: a break would add a class
        return f"class name {label!r} contains a line break ({', '.join(breaks)})"
    if any(unicodedata.category(ch).startswith("C") for ch in label):
        return f"class name {label!r} contains control characters"
    if len(label) > 200:
        return f"class name {label[:40]!r}... is longer than 200 characters"
    return None


def read_manifest(manifest: str, extensions: Sequence[str] = DEFAULT_EXTENSIONS
                  ) -> Iterator[Candidate | Skipped]:
    """Rows of a `uri,label` CSV as Candidates, or Skipped with the reason.

    A header row `uri,label` is optional. Relative paths are relative to the
    manifest's folder; absolute paths and gs:// / s3:// URIs are used as given.
    """
    import tensorflow as tf
    base = os.path.dirname(manifest)
    exts = tuple(e.lower() for e in extensions)
    with tf.io.gfile.GFile(manifest) as f:
        rows = list(csv.reader(f))
    for n, row in enumerate(rows, start=1):
        where = f"{os.path.basename(manifest)}:{n}"
        if n == 1 and [c.strip().lower() for c in row] == ["uri", "label"]:
            continue
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            yield Skipped(where, f"expected 2 columns (uri,label), got {len(row)}")
            continue
        uri, label = row[0].strip(), row[1].strip()
        problem = label_problem(label)
        if problem:
            yield Skipped(uri or where, problem)
        elif not uri:
            yield Skipped(where, "empty uri", label)
        elif not uri.lower().endswith(exts):
            yield Skipped(uri, f"unsupported extension (allowed: {', '.join(exts)})", label)
        else:
            path = uri if ("://" in uri or os.path.isabs(uri)) else os.path.join(base, uri)
            yield Candidate(path, uri, label)


def find_images(source: str, extensions: Sequence[str] = DEFAULT_EXTENSIONS,
                follow_external_symlinks: bool = False) -> Iterator[Candidate | Skipped]:
    """A folder tree (walk_images) or a .csv manifest (read_manifest)."""
    if source.lower().endswith(".csv"):
        return read_manifest(source, extensions)
    return walk_images(source, extensions, follow_external_symlinks=follow_external_symlinks)


def list_label_folders(root: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `root`: the label vocabulary."""
    import tensorflow as tf  # local: tf.io.gfile reads gs:// and s3:// too
    names = []
    for entry in tf.io.gfile.listdir(root):
        name = entry.rstrip("/")
        if not _is_hidden(name) and tf.io.gfile.isdir(os.path.join(root, name)):
            names.append(name)
    return sorted(names)


EMPTY_CLASS_REASON = "empty class folder (no image files): class skipped"


def walk_images(root: str, extensions: Sequence[str] = DEFAULT_EXTENSIONS,
                max_depth: int = 16, follow_external_symlinks: bool = False
                ) -> Iterator[Candidate | Skipped]:
    """Yields every file under `root` as a Candidate or a Skipped.

    Uses tf.io.gfile so local paths and gs:// or s3:// URIs behave the same. Symlinked
    folders are not followed (gfile.walk lists them as files on local disk; we
    skip anything that isn't a regular file), so a symlink loop can't hang it.
    A class folder without a Candidate gives one Skipped row, "<label>/".
    """
    import tensorflow as tf
    exts = tuple(e.lower() for e in extensions)
    root = root.rstrip("/")
    real_root = None if "://" in root else os.path.realpath(root)
    for label in tf.io.gfile.listdir(root):
        label = label.rstrip("/")
        top = os.path.join(root, label)
        if not tf.io.gfile.isdir(top):
            yield Skipped(label, "file directly under the images root (put images in <root>/<label>/)")
            continue
        if _is_hidden(label):
            yield Skipped(label + "/", "hidden folder")
            continue
        found = False
        for item in _walk_label(tf, root, top, label, exts, max_depth):
            if isinstance(item, Candidate) and not follow_external_symlinks:
                item = _inside_root(item, real_root)
            found = found or isinstance(item, Candidate)
            yield item
        if not found:
            yield Skipped(label + "/", EMPTY_CLASS_REASON, label)


def _walk_label(tf, root, top, label, exts, max_depth):
    stack = [(top, 0)]
    while stack:
        folder, depth = stack.pop()
        for name in sorted(tf.io.gfile.listdir(folder)):
            name = name.rstrip("/")
            path = os.path.join(folder, name)
            remote = "://" in root  # gs://, s3://: no symlinks, and no local path to resolve
            rel = path[len(root) + 1:] if remote else os.path.relpath(path, root).replace(os.sep, "/")
            if _is_hidden(name):
                yield Skipped(rel, "hidden file or folder", label)
            elif not remote and os.path.islink(path) and os.path.isdir(path):
                yield Skipped(rel, "symlinked folder not followed", label)
            elif tf.io.gfile.isdir(path):
                if depth + 1 > max_depth:
                    yield Skipped(rel, f"folder nesting deeper than {max_depth}", label)
                else:
                    stack.append((path, depth + 1))
            elif not name.lower().endswith(exts):
                yield Skipped(rel, f"unsupported extension (allowed: {', '.join(exts)})", label)
            else:
                yield Candidate(path, rel, label)


def _inside_root(cand: Candidate, real_root: Optional[str]) -> Candidate | Skipped:
    """The candidate, or a Skipped when it is a symlink whose target lies outside the root."""
    if real_root is None or not os.path.islink(cand.path):
        return cand
    target = os.path.realpath(cand.path)
    if os.path.commonpath([real_root, target]) == real_root:
        return cand
    return Skipped(cand.relpath, "symlink to a file outside the images root, not followed "
                   "(--follow-external-symlinks follows it)", cand.label)


def read_bytes(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The file's bytes; ImageRejected, before anything is read, when it is
    larger than `max_bytes` (a 3 GB file must not cost 10 GB of memory)."""
    import tensorflow as tf
    size = tf.io.gfile.stat(path).length
    if size > max_bytes:
        raise ImageRejected(too_large(size, max_bytes))
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read(max_bytes + 1)  # the file may have grown since the stat
    if len(data) > max_bytes:
        raise ImageRejected(too_large(len(data), max_bytes))
    return data


def too_large(size: int, max_bytes: int) -> str:
    return f"file is {size} bytes, over the limit of {max_bytes} (max_file_bytes)"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
           keep_original: bool = True, min_side: int = DEFAULT_MIN_IMAGE_SIDE) -> DecodedImage:
    """Checks and normalises one image. Raises ImageRejected with the reason.

    keep_original=False forces the RGB PNG re-encoding even for bytes TF could
    decode itself (used when TF's decoder turns out to disagree).
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not a recognised image format") from None
    except Image.DecompressionBombError as e:  # Pillow's own, stricter-than-ours guard
        raise ImageRejected(f"pixel count exceeds the limit (decompression bomb?): {e}") from None
    except Exception as e:  # Pillow raises many types on garbage headers
        raise ImageRejected(f"unreadable image header: {e}") from None
    fmt = img.format or "?"
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected(f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
    if min(width, height) < min_side:
        raise ImageRejected(
            f"{width}x{height} is smaller than the minimum of {min_side} px on the short side")
    try:
        img.load()  # first frame only for GIF/WebP animations
    except Exception as e:
        raise ImageRejected(f"corrupt or truncated image data ({fmt}): {e}") from None

    if keep_original and _can_keep_original(img, fmt):
        return DecodedImage(data, width, height, fmt, reencoded=False, pixels=img)
    try:
        rgb = to_rgb(img)
    except Exception as e:
        raise ImageRejected(f"cannot convert {fmt} mode {img.mode} to RGB: {e}") from None
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return DecodedImage(out.getvalue(), rgb.width, rgb.height, fmt, reencoded=True, pixels=rgb)


def _can_keep_original(img: Image.Image, fmt: str) -> bool:
    """True when TF's decoder gives the same pixels as Pillow for these bytes."""
    orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if fmt == "JPEG" else 1
    if fmt == "JPEG":
        return img.mode in ("RGB", "L") and orientation in (1, None)
    if fmt == "PNG":
        return img.mode in ("RGB", "RGBA", "L", "LA")
    return False


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF-rotated RGB image; transparency composited on BACKGROUND."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale to 8 bits rather than clip.
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, BACKGROUND + (255,))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")
