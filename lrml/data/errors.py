"""Errors raised while getting, parsing, splitting or loading a dataset; each names the value or file at fault."""

from lrml.errors import UserError


class DataError(UserError):
    """Base class: something about the input data is wrong (not a bug in this package)."""


class UnknownDatasetError(DataError):
    """A dataset name that is not a known MovieLens release."""


class DownloadError(DataError):
    """A release archive could not be fetched: no network, or the server refused or failed."""


class ChecksumError(DataError):
    """A downloaded or given archive does not match its published size or digest."""


class ArchiveError(DataError):
    """An archive is truncated, not a zip, or lacks the expected ratings file."""


class ParseError(DataError):
    """A ratings line that cannot be parsed; the message gives file and line number."""


class SplitError(DataError):
    """The data is too small to split into train, validation and test."""


class DatasetMismatchError(DataError):
    """A prepared dataset folder was made from another source or with other parameters."""
