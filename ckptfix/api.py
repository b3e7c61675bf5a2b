"""The public API: :func:`recalibrate`, :func:`diagnose`, :func:`inspect` and :func:`check`. The CLI is a thin layer
on it.

Each builds one :class:`~ckptfix.options.Options` (validated once; its docstring lists every option) from the
keyword arguments, or takes one ready-made, and runs :mod:`ckptfix.pipeline` on the model source CKPT names
(:mod:`ckptfix.sources`). Every call works whatever TensorFlow mode the caller's process is in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from typing import Iterator

from ckptfix import _quiet, compat
from ckptfix.errors import CkptfixError, OptionError
from ckptfix.interrupts import sigterm_during_call
from ckptfix.options import FLAGS, DataFormat, Estimator, ModelFormat, Options, Preset
from ckptfix.report import CheckReport, DiagnosisReport, InspectionReport, RecalibrationReport


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

    if not isinstance(checkpoint, (str, os.PathLike)):
        raise OptionError(f"checkpoint takes str or path, not {type(checkpoint).__name__} ({checkpoint!r}).")
    with sigterm_during_call(), _eager():
        if command == "inspect":
            return pipeline.inspect(checkpoint, options)
        return getattr(pipeline, command)(checkpoint, data, options)


def _keyword(flag: str, value: str | None) -> str:
    """How the API names what the CLI calls ``flag`` (followed by ``value``, a metavar or a value, or None):
    ``overwrite=True`` for a flag that is switched on, ``meta=PATH`` / ``model=pkg.mod:fn`` with its value,
    ``preprocess="raw"`` for one of a choice option's values (a word that is none of them stays a word), else the
    keyword alone (``batch_size must be at least 1``, ``choose another output``)."""
    names = [name for name, text in FLAGS.items() if flag in text.split("/")]
    if not names:
        return flag + (f" {value}" if value else "")
    name = names[0]
    if Options.__dataclass_fields__[name].default is False:
        return f"{name}=True" + (f" {value}" if value else "")
    if value and re.fullmatch(r"[a-z][\w-]*", value):  # a word: a choice's value, or the sentence going on
        return f'{name}="{value}"' if value in _CHOICES.get(name, ()) else f"{name} {value}"
    return f"{name}={value}" if value else name


#: the values of the choice options (str-valued enums), by keyword
_CHOICES = {name: {choice.value for choice in enum} for name, enum in
            (("preprocess", Preset), ("estimator", Estimator), ("data_format", DataFormat), ("model_format", ModelFormat))}


#: a CLI flag, and the value after it when it looks like one (an upper-case metavar, a number, a token with
#: . : /, or a word: see :func:`_keyword`)
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*(?:/--[a-z][a-z-]*)?|-o/--output|-o)(?![\w-])"
                   r"(?: ([A-Z][A-Z_]*\b|\d[\w.]*|[\w-]*[.:/][\w./:-]*\w|[a-z][\w-]*\b))?")


def _keywords_of(match: re.Match) -> str:
    """``--include/--exclude`` -> ``include/exclude``; ``-o/--output`` -> ``output``; one flag -> its keyword."""
    flags = [flag for flag in match.group(1).split("/") if flag != "-o"] or ["-o"]
    named = [_keyword(flag, None) for flag in flags[:-1]] + [_keyword(flags[-1], match.group(2))]
    return "/".join(dict.fromkeys(named))


def _named(text: str) -> str:
    """``text`` naming the keyword arguments instead of the CLI's flags (``pass overwrite=True``)."""
    return _FLAG.sub(_keywords_of, text)


def _named_report(report):
    """``report`` with its notices and the repair gate's reasons and warnings naming keywords."""
    if report is None:
        return None
    changes = {"notices": [_named(notice) for notice in report.notices]}
    gate = getattr(report, "gate", None)
    if gate is not None:
        changes["gate"] = dataclasses.replace(gate, reasons=[_named(r) for r in gate.reasons],
                                              warnings=[_named(w) for w in gate.warnings])
    return dataclasses.replace(report, **changes)


def _run_named(command: str, checkpoint, data, options: Options):
    """:func:`run` for the API: notices (as they come, logged, and in the report) and the gate's findings name
    the keyword arguments, not the CLI's flags (errors: :func:`_keywords`)."""
    from ckptfix.log import naming

    with naming(_named):
        return _named_report(run(command, checkpoint, data, options))


@contextlib.contextmanager
def _keywords() -> Iterator[None]:
    """Errors raised inside, and the report a refusal carries, name the keyword arguments, not the CLI's flags
    (``pass overwrite=True``); a TensorFlow outside the supported range is refused first
    (:func:`ckptfix.compat.require_supported_tensorflow`)."""
    try:
        compat.require_supported_tensorflow()
        yield
    except CkptfixError as error:
        error.args = (_named(str(error)), *error.args[1:])
        if getattr(error, "report", None) is not None:
            error.report = _named_report(error.report)
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
        return _run_named("recalibrate", checkpoint, data, Options.build(options, keywords, "recalibrate"))


def diagnose(checkpoint: str | Path, data, options: Options | None = None, **keywords) -> DiagnosisReport:
    """Measure how stale the stored statistics are, exactly as :func:`recalibrate` would, writing nothing.

    Takes :func:`recalibrate`'s options less ``output``, ``overwrite`` and ``force``, plus ``against``.
    ``report.verdict`` is ``fresh``, ``stale``, ``differs`` or ``inconclusive`` (:class:`DiagnosisReport`);
    see :mod:`ckptfix.diagnostics.drift` for the per-layer metrics and thresholds.
    """
    with _keywords():
        return _run_named("diagnose", checkpoint, data, Options.build(options, keywords, "diagnose"))


def inspect(checkpoint: str | Path, options: Options | None = None, **keywords) -> InspectionReport:
    """List every BN layer of CKPT with its stored statistics and staleness flags; needs no data.

    Takes the model options of :func:`recalibrate` and ``against``: another file of the same kind (e.g. the
    pretrained checkpoint) whose identical statistics are flagged (not for frozen graphs).
    """
    with _keywords():
        return _run_named("inspect", checkpoint, None, Options.build(options, keywords, "inspect"))


def check(graph: str | Path) -> CheckReport:
    """Whether a training graph's train op runs the BN update ops, before training or in CI (no checkpoint needed).

    Args:
        graph: the ``.meta`` written by ``tf.compat.v1.train.export_meta_graph(filename=...)`` once the train op is
            built, or a training checkpoint's ``.meta``, prefix or folder.

    Returns:
        A :class:`CheckReport`: ``verdict`` ``pass``, ``fail`` (``cause.message`` names the layers and the fix, as
        :func:`inspect` does) or ``unknown``. Raises :class:`~ckptfix.errors.NoBatchNormError` for a graph without
        BN layers, another :class:`~ckptfix.errors.CkptfixError` for a missing or unreadable file. The training
        guards (:mod:`ckptfix.guard`) run the same check at their start.
    """
    from ckptfix import pipeline

    with _eager():
        return pipeline.check(graph)
