"""Find a release's raw ratings: in the bundled copy, a downloaded or given archive, or a folder."""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lrml.data.download import download, verify_archive
from lrml.data.errors import ArchiveError, DataError
from lrml.data.releases import Release

BUNDLED = "ml-latest-small"


@dataclass(frozen=True)
class RawSource:
    """The raw bytes of a release's ratings (and titles, when present) and where they came from."""

    ratings: bytes
    ratings_origin: str
    titles: bytes | None
    archive_verified: bool

    @property
    def ratings_sha256(self) -> str:
        return hashlib.sha256(self.ratings).hexdigest()


def bundled_folder() -> Path:
    """The copy of ml-latest-small shipped inside the package (with its licence README)."""
    return Path(str(resources.files("lrml.data") / "bundled" / BUNDLED))


def read_source(release: Release, source: Path | None, download_dir: Path, progress: bool = True) -> RawSource:
    """Raw ratings of ``release`` from ``source`` (archive or folder), the bundled copy, or a download."""
    if source is None:
        if release.name == BUNDLED:
            return read_folder(bundled_folder(), release)
        archive = download(release, download_dir, progress=progress)
        return read_archive(archive, release, verified=True)
    source = Path(source).expanduser()
    if source.is_dir():
        return read_folder(source, release)
    if source.is_file():
        verify_archive(source, release)
        return read_archive(source, release, verified=True)
    raise DataError(f"{source}: no such file or folder (expected the {release.name} archive or its extracted folder)")


def read_archive(path: Path, release: Release, verified: bool = False) -> RawSource:
    """Ratings and titles from a release zip; a corrupt, truncated or wrong archive is an ArchiveError."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            ratings_name = _find_member(names, release.ratings_member)
            if ratings_name is None:
                raise ArchiveError(f"{path}: no {release.ratings_member} inside the archive (is it {release.name}?)")
            ratings = archive.read(ratings_name)
            titles_name = _find_member(names, release.items_member) if release.items_member else None
            titles = archive.read(titles_name) if titles_name else None
    except (zipfile.BadZipFile, EOFError) as error:
        raise ArchiveError(f"{path}: not a valid zip archive (truncated or corrupt download?): {error}") from error
    return RawSource(ratings, f"{path}:{ratings_name}", titles, verified)


def read_folder(folder: Path, release: Release) -> RawSource:
    """Ratings and titles from an extracted release folder (or its parent)."""
    ratings_path = _find_file(folder, release.ratings_member)
    if ratings_path is None:
        basename = release.ratings_member.rsplit("/", 1)[-1]
        raise DataError(f"{folder}: no {basename} for {release.name} in this folder")
    titles_path = _find_file(folder, release.items_member) if release.items_member else None
    titles = titles_path.read_bytes() if titles_path else None
    return RawSource(ratings_path.read_bytes(), str(ratings_path), titles, False)


def _find_member(names: list[str], member: str) -> str | None:
    """The archive entry for ``member``, also when the archive has another top folder name."""
    if member in names:
        return member
    basename = "/" + member.rsplit("/", 1)[-1]
    matches = [name for name in names if name.endswith(basename) and "__MACOSX" not in name]
    return matches[0] if len(matches) == 1 else None


def _find_file(folder: Path, member: str) -> Path | None:
    """``folder/<basename>`` or ``folder/<member>``, whichever exists."""
    for candidate in (folder / member.rsplit("/", 1)[-1], folder / member):
        if candidate.is_file():
            return candidate
    return None
