"""User-facing errors.

Every failure a user can cause (a missing file, a graph the tool cannot read, bad data, a bad option) raises
a subclass of :class:`CkptfixError` whose message names the fix. The CLI prints it in one or two lines and
exits with code 1; anything else is an internal bug and keeps its traceback.
"""

import re


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


class ForeignOutputError(OutputError):
    """``--overwrite`` on an output that holds what ckptfix did not write (the user's files): never replaced."""


class OptionError(CkptfixError, ValueError):
    """An option's value is of the wrong type or out of range (a usage error: exit 2, as the CLI's own)."""

    exit_code = 2


class KeywordError(OptionError, TypeError):
    """An API call with a keyword argument its command does not take (a TypeError, as in any Python call)."""


class PreprocessingUnknown(OptionError):
    """Images to preprocess for a model that says nothing of its input, and no ``--preprocess`` given
    (:mod:`ckptfix.data.conventions`): a usage error, raised before any batch runs."""


class RepairRefused(CkptfixError):
    """The repair gate refused to write: the run's own evidence contradicts the new statistics, or the data is
    too thin or degenerate to support them (:mod:`ckptfix.diagnostics.gate`). ``report`` is what was measured;
    nothing was written. ``--force`` / ``force=True`` writes anyway."""

    exit_code = 5

    def __init__(self, message: str, report=None) -> None:
        super().__init__(message)
        self.report = report


class TensorFlowVersionError(CkptfixError):
    """This environment's TensorFlow (or its numpy) is outside the supported range, missing, or does not import
    (:mod:`ckptfix.compat`)."""


class UnsafeModelError(GraphError):
    """Loading the model would run Python code stored in the file (a Lambda layer) and --unsafe was not given."""


def _graph_execution_reason(lines: list[str]) -> list[str]:
    """The lines of a TensorFlow "Graph execution error:" message after its header: per failing node a
    ``Detected at node ...`` line, the indented frames where the node was defined, and ``Node: '...'`` or
    ``<stack traces unavailable>`` (``tensorflow/python/framework/error_interpolation.py``,
    ``eager/polymorphic_function/atomic_function.py``); then the runtime's own message."""
    rest = lines[1:]
    while rest and (not rest[0].strip() or rest[0].startswith(("Detected at node ", "Node: ", " ", "\t"))
                    or rest[0] == "<stack traces unavailable>"):
        rest = rest[1:]
    # several root errors: "2 root error(s) found." then "  (0) INVALID_ARGUMENT: <reason>" per error
    if rest and re.match(r"\d+ root error\(s\) found", rest[0]):
        causes = [re.sub(r"^\s*\(\d+\)\s+[A-Z_]+:\s*", "", line) for line in rest[1:] if re.match(r"\s*\(\d+\)", line)]
        rest = causes or rest
    return [line.strip() for line in rest if line.strip() and not line.strip().startswith("[[")]


def error_reason(error: BaseException) -> str:
    """The readable first line of an OS or TensorFlow op error, for a one-line message.

    OSError: its ``strerror`` (no path). TensorFlow op errors: no ``{{function_node ...}}`` prefix, no
    ``[Op:...]`` suffix, and for file errors (``<path>; No space left on device``) the reason without the path.
    A session's "Graph execution error:" (a first line that says nothing) gives the runtime's reason below its
    stack of node definitions, e.g. ``Key conv1/BatchNorm/moving_variance not found in checkpoint``.
    """
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*$", "", str(getattr(error, "message", error)))
    lines = message.strip().splitlines()
    if lines and lines[0].strip() == "Graph execution error:":
        lines = _graph_execution_reason(lines) or lines
    first = lines[0] if lines else type(error).__name__
    path, separator, reason = first.rpartition("; ")
    return reason if separator and path.startswith("/") else first


class StatisticsNotUpdated(CkptfixError):
    """A training guard (:mod:`ckptfix.guard`) saw the BN moving statistics stand still while the weights trained,
    or the training graph proves its train op never runs the BN update ops: training stops with the fix."""

    exit_code = 3


class StatisticsNotUpdatedWarning(UserWarning):
    """The same finding as :class:`StatisticsNotUpdated`, from a guard told to only warn (``warn_only=True``)."""
