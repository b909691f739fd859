"""The drivers' exception family: every message names the input and what is wrong."""


class DriverError(Exception):
    """Base of every error raised by drivers/."""


class SourceError(DriverError):
    """A source could not be opened or read: the message names the URI and the cause."""


class SourceNotOpen(SourceError, AttributeError):
    """`info` was read before `open()` (an AttributeError too, so hasattr() stays safe)."""


class SourceEnded(DriverError):  # noqa: N818 - an end marker, not a fault
    """The source has no more data (end of a file or recording); not a fault."""


class FormatError(DriverError):
    """A file is truncated, foreign or malformed: the message names the file and the problem."""


class RecordingError(DriverError):
    """A recording cannot be written: the message names the file and the cause."""


class ExportError(DriverError):
    """An export cannot be written: the message names the output file and the cause."""
