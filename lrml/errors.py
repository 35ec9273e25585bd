"""Errors that are the user's to fix (a bad argument, file, setting or checkpoint), not bugs.

Each names the value, file or line at fault. The command-line tools print them as one line and
exit with status 2 (``lrml.cli.run``); anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Base class: something the user gave or pointed at is wrong."""


class CheckpointMismatch(UserError):
    """A checkpoint of another dataset, model or shape than the run that should continue from it."""
