"""Download a release archive with a progress bar and verify its size and digest before use.

The archive is written to ``<name>.part`` and renamed only once verified, so an interrupted or
corrupt download never looks like a good one; a file lock lets one process at a time download it.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from lrml.data.errors import ChecksumError, DownloadError
from lrml.data.releases import Release

CHUNK_BYTES = 1 << 20


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_archive(path: Path, release: Release) -> None:
    """Raise ChecksumError unless ``path`` has the release's published size and digest."""
    size = path.stat().st_size
    if release.archive_bytes is not None and size != release.archive_bytes:
        raise ChecksumError(f"{path}: size {size} bytes, expected {release.archive_bytes} for {release.name}")
    if release.archive_sha256:
        algorithm, expected = "sha256", release.archive_sha256
    elif release.archive_md5:
        algorithm, expected = "md5", release.archive_md5
    else:
        return
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(f"{path}: {algorithm} mismatch for {release.name}: expected {expected}, got {actual}")


def download(release: Release, directory: Path, progress: bool = True) -> Path:
    """The verified archive of ``release`` in ``directory``, downloading it if not already there."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / release.archive_name
    with FileLock(target.with_name(target.name + ".lock")):  # another process may be downloading it now
        if target.exists():
            verify_archive(target, release)
            return target
        return _fetch(release, target, progress)


def _fetch(release: Release, target: Path, progress: bool) -> Path:
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(release.url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or release.archive_bytes
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {release.name}",
                      disable=not progress) as bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        verify_archive(partial, release)
    except OSError as error:  # URLError is one: no network, refused, timed out, or an HTTP error status
        partial.unlink(missing_ok=True)
        reason = f"HTTP {error.code} {error.reason}" if isinstance(error, urllib.error.HTTPError) else (
            getattr(error, "reason", None) or error)
        raise DownloadError(f"{release.url}: could not download {release.name} ({reason}); give its archive or "
                            f"extracted folder with --data-dir") from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    return target
