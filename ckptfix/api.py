"""The public API: :func:`recalibrate`, :func:`diagnose` and :func:`inspect`. The CLI is a thin layer on it.

Each builds one :class:`~ckptfix.options.Options` (validated once; its docstring lists every option) from the
keyword arguments, or takes one ready-made, and runs :mod:`ckptfix.pipeline` on the model source CKPT names
(:mod:`ckptfix.sources`). Every call works whatever TensorFlow mode the caller's process is in.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

from ckptfix import _quiet, compat
from ckptfix.errors import CkptfixError
from ckptfix.options import FLAGS, Options
from ckptfix.report import DiagnosisReport, InspectionReport, RecalibrationReport


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    """Quiet TensorFlow, and run eagerly for the call even in a TF1-style process (``disable_v2_behavior()`` /
    ``disable_eager_execution()``): the graphs ckptfix runs are its own, in their own sessions, and the rest
    (writers, Keras) needs eager mode. The caller's mode is back as it was on return."""
    _quiet.silence_tensorflow()
    from tensorflow.python.eager import context

    with context.eager_mode():
        yield


def run(command: str, checkpoint, data, options: Options):
    """Run ``command`` (``recalibrate``, ``diagnose``, ``inspect``) with ready-made ``options``, in eager mode;
    errors name the command-line flags (the CLI's entry; the functions below name keywords instead)."""
    compat.require_supported_tensorflow()
    from ckptfix import pipeline

    with _eager():
        if command == "inspect":
            return pipeline.inspect(checkpoint, options)
        return getattr(pipeline, command)(checkpoint, data, options)


def _keyword(flag: str, value: str | None) -> str:
    """How the API names what the CLI calls ``flag`` (followed by ``value``, a metavar or a value, or None):
    ``overwrite=True`` for a flag that is switched on, ``meta=PATH`` / ``model=pkg.mod:fn`` with its value,
    else the keyword alone (``batch_size must be at least 1``, ``choose another output``)."""
    names = [name for name, text in FLAGS.items() if flag in text.split("/")]
    if not names:
        return flag + (f" {value}" if value else "")
    name = names[0]
    if Options.__dataclass_fields__[name].default is False:
        return f"{name}=True" + (f" {value}" if value else "")
    return f"{name}={value}" if value else name


#: a CLI flag, and the value after it when it looks like one (an upper-case metavar, or a token with . : /)
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*(?:/--[a-z][a-z-]*)?|-o/--output|-o)(?![\w-])"
                   r"(?: ([A-Z][A-Z_]*\b|\d[\w.]*|[\w-]*[.:/][\w./:-]*\w))?")


def _keywords_of(match: re.Match) -> str:
    """``--include/--exclude`` -> ``include/exclude``; ``-o/--output`` -> ``output``; one flag -> its keyword."""
    flags = [flag for flag in match.group(1).split("/") if flag != "-o"] or ["-o"]
    named = [_keyword(flag, None) for flag in flags[:-1]] + [_keyword(flags[-1], match.group(2))]
    return "/".join(dict.fromkeys(named))


@contextlib.contextmanager
def _keywords() -> Iterator[None]:
    """Errors raised inside name the keyword arguments, not the CLI's flags (``pass overwrite=True``); a
    TensorFlow outside the supported range is refused first (:func:`ckptfix.compat.require_supported_tensorflow`)."""
    try:
        compat.require_supported_tensorflow()
        yield
    except CkptfixError as error:
        error.args = (_FLAG.sub(_keywords_of, str(error)), *error.args[1:])
        raise


def recalibrate(checkpoint: str | Path, data, options: Options | None = None, **keywords) -> RecalibrationReport:
    """Recompute the moving statistics of every (selected) BN layer and write a corrected copy of CKPT.

    Args:
        checkpoint: a checkpoint prefix, a folder with a ``checkpoint`` state file, or one file of the prefix;
            or a frozen GraphDef (``.pb`` binary, ``.pbtxt`` text), repaired into a new GraphDef file; or a Keras /
            TF2 file (``.keras``, ``.h5``, ``.weights.h5``, object-based checkpoint; docs/keras.md); or a SavedModel
            folder, repaired at graph level from its ``signature`` unless it keeps a Keras model (docs/which-file.md).
        data: a folder or file of calibration samples (images, ``.npy``, ``.npz``, TFRecords), a numpy array
            ``(N, ...)`` already preprocessed, a ``tf.data.Dataset``, or an iterable of batches (arrays,
            ``(inputs, labels)`` pairs, or dicts mapping each input's name to an array).
        options, keywords: an :class:`Options`, or its fields as keyword arguments (``output``, ``batch_size``,
            ``include``...; see :class:`Options` for each).

    Returns:
        A :class:`RecalibrationReport`. Raises a :class:`~ckptfix.errors.CkptfixError` subclass naming the
        keyword on any user error, before anything is written: :class:`~ckptfix.errors.OptionError` for a bad
        keyword value, :class:`~ckptfix.errors.RepairRefused` (with ``.report``, what was measured) when the
        repair gate refuses and ``force`` is not set (docs/user-guide.md, "Reliability").

    Batches run on ``devices`` (default: every visible GPU, else the CPU). When ``TF_CONFIG`` names a cluster,
    this process is one worker of it: it runs its share of the batches, the statistics are combined over the
    cluster, and only the chief (``report.worker == 0``) writes; docs/scaling-out.md.
    """
    with _keywords():
        return run("recalibrate", checkpoint, data, Options.build(options, keywords, "recalibrate"))


def diagnose(checkpoint: str | Path, data, options: Options | None = None, **keywords) -> DiagnosisReport:
    """Measure how stale the stored statistics are, exactly as :func:`recalibrate` would, writing nothing.

    Takes :func:`recalibrate`'s options less ``output``, ``overwrite`` and ``force``, plus ``against``.
    ``report.verdict`` is ``fresh``, ``stale``, ``differs`` or ``inconclusive`` (:class:`DiagnosisReport`);
    see :mod:`ckptfix.diagnostics.drift` for the per-layer metrics and thresholds.
    """
    with _keywords():
        return run("diagnose", checkpoint, data, Options.build(options, keywords, "diagnose"))


def inspect(checkpoint: str | Path, options: Options | None = None, **keywords) -> InspectionReport:
    """List every BN layer of CKPT with its stored statistics and staleness flags; needs no data.

    Takes the model options of :func:`recalibrate` and ``against``: another file of the same kind (e.g. the
    pretrained checkpoint) whose identical statistics are flagged (not for frozen graphs).
    """
    with _keywords():
        return run("inspect", checkpoint, None, Options.build(options, keywords, "inspect"))
