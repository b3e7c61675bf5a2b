"""User-facing errors.

Every failure a user can cause (a missing file, a graph the tool cannot read, bad data, a bad option) raises
a subclass of :class:`CkptfixError` whose message names the fix. The CLI prints it in one or two lines and
exits with code 1; anything else is an internal bug and keeps its traceback.
"""


class CkptfixError(Exception):
    """Root of the errors a user can cause and fix."""

    exit_code = 1


class CheckpointError(CkptfixError):
    """The checkpoint (prefix, directory, state file or shards) cannot be found or read."""


class GraphError(CkptfixError):
    """The graph cannot be loaded, or its BN layers, input or training flag cannot be resolved."""


class NoBatchNormError(GraphError):
    """The graph has no BatchNorm layer to recalibrate (or the selection left none)."""

    exit_code = 4


class DataError(CkptfixError):
    """The calibration data is missing, unreadable or does not fit the model's input."""


class OutputError(CkptfixError):
    """The output location is unusable (exists, is the input, is not writable)."""
