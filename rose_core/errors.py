"""Exceptions with messages that tell the user what to do."""


class RoseError(Exception):
    """Base class for every error raised on purpose by rose_core."""


class DatasetUnavailable(RoseError):
    """A dataset cannot be produced on this machine; the message says how to get it."""


class UnknownDataset(RoseError, KeyError):
    """A dataset name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(RoseError):
    """A checkpoint file is missing, corrupted, truncated or does not match."""


class InvalidInput(RoseError, ValueError):
    """Input data of the wrong shape, dtype or with non-finite values."""
