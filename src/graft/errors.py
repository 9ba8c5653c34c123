"""The errors graft raises on purpose.

Every failure a user can cause (a bad config key, a missing file, a corrupt checkpoint) is a
GraftError kind whose message names the file, line, field or key and says what was expected.
The CLI prints such an error as one line and exits 2; anything else is a bug and keeps its
traceback.
"""


class GraftError(Exception):
    """Base class: a problem the user can act on, described in one line."""


class ConfigError(GraftError):
    """A config file, a CLI override or a combination of settings is invalid."""


class DataError(GraftError):
    """An input data file or folder is missing, empty or malformed."""


class TokenizerError(GraftError):
    """A tokenizer cannot be trained or loaded, or does not match the data it is used with."""


class CheckpointError(GraftError):
    """A checkpoint is missing, truncated, corrupt or incompatible with the requested run."""


class OutputError(GraftError):
    """An output cannot be written (a full disk, a quota, a file size limit); what was there
    before is intact."""


class TrainingError(GraftError):
    """Training cannot go on (the loss became NaN or infinite); the last checkpoint is intact."""


def first_line(err: BaseException) -> str:
    """An exception's first line (or its type's name), for a one-line message that quotes it."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__
