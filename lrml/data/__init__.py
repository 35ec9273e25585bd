"""MovieLens releases, parsing, the leave-one-out split and prepared Parquet dataset folders."""
from lrml.data.dataset import (
    Dataset,
    Shard,
    SplitParams,
    data_home,
    load_dataset,
    prepare,
    prepare_frame,
    read_manifest,
)
from lrml.data.errors import (
                              ArchiveError,
                              ChecksumError,
                              DataError,
                              DatasetMismatchError,
                              DownloadError,
                              ParseError,
                              SplitError,
                              UnknownDatasetError,
)
from lrml.data.releases import RELEASES, Release, get_release

__all__ = ["ArchiveError", "ChecksumError", "DataError", "Dataset", "DatasetMismatchError", "DownloadError", "ParseError",
           "RELEASES", "Release", "Shard", "SplitError", "SplitParams", "UnknownDatasetError", "data_home", "get_release",
           "load_dataset", "prepare", "prepare_frame", "read_manifest"]
