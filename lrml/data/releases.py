"""The MovieLens releases this package knows: where to get each and how to check it.

Sizes and digests are GroupLens's published values (sha256 where known, else the md5 of
GroupLens's ``.zip.md5`` sidecar), so a download is verified before anything reads it.
"""
from __future__ import annotations

from dataclasses import dataclass

from lrml.data.errors import UnknownDatasetError

BASE_URL = "https://files.grouplens.org/datasets/movielens/"


@dataclass(frozen=True)
class Release:
    """One MovieLens release: archive facts, the ratings file inside it and its format."""

    name: str
    url: str
    archive_bytes: int | None
    archive_sha256: str | None
    archive_md5: str | None
    ratings_member: str  # path of the ratings file inside the archive
    ratings_format: str  # "csv" (header, comma), "udata" (tab) or "dat" ("::")
    items_member: str | None  # titles file, for printing recommendations
    ratings: int  # published number of ratings, compared after parsing
    redistributable: bool = False

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


RELEASES: dict[str, Release] = {
    r.name: r
    for r in [
        Release("ml-latest-small", BASE_URL + "ml-latest-small.zip", 978_202,
                "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436", None,
                "ml-latest-small/ratings.csv", "csv", "ml-latest-small/movies.csv",
                100_836, redistributable=True),
        Release("ml-100k", BASE_URL + "ml-100k.zip", 4_924_029,
                "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                "0e33842e24a9c977be4e0107933c0723",
                "ml-100k/u.data", "udata", "ml-100k/u.item", 100_000),
        Release("ml-1m", BASE_URL + "ml-1m.zip", 5_917_549,
                "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
                "c4d9eecfca2ab87c1945afe126590906",
                "ml-1m/ratings.dat", "dat", "ml-1m/movies.dat", 1_000_209),
        Release("ml-10m", BASE_URL + "ml-10m.zip", None, None,
                "ce571fd55effeba0271552578f2648bd",
                "ml-10M100K/ratings.dat", "dat", "ml-10M100K/movies.dat", 10_000_054),
        Release("ml-20m", BASE_URL + "ml-20m.zip", 198_702_078,
                "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
                "cd245b17a1ae2cc31bb14903e1204af3",
                "ml-20m/ratings.csv", "csv", "ml-20m/movies.csv", 20_000_263),
        Release("ml-25m", BASE_URL + "ml-25m.zip", 261_978_986,
                "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
                "6b51fb2759a8657d3bfcbfc42b592ada",
                "ml-25m/ratings.csv", "csv", "ml-25m/movies.csv", 25_000_095),
        Release("ml-32m", BASE_URL + "ml-32m.zip", 238_950_008,
                "e4a68655d7386b8f95f2f2424b2ff975dfdd15ffd59e0d864a14dca43e99d6ee",
                "d472be332d4daa821edc399621853b57",
                "ml-32m/ratings.csv", "csv", "ml-32m/movies.csv", 32_000_204),
    ]
}


def get_release(name: str) -> Release:
    """The release called ``name``; an unknown name lists the known ones."""
    try:
        return RELEASES[name]
    except KeyError:
        known = ", ".join(RELEASES)
        raise UnknownDatasetError(f"unknown dataset {name!r}; known MovieLens releases: {known}; or synthetic-<release> "
                                  "for generated data of a release's shape") from None
