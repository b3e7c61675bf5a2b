"""The public API: :func:`recalibrate`, :func:`diagnose` and :func:`inspect`. The CLI is a thin layer on it.

Each builds one :class:`~ckptfix.options.Options` (validated once; its docstring lists every option) from the
keyword arguments, or takes one ready-made, and runs :mod:`ckptfix.pipeline` on the model source CKPT names
(:mod:`ckptfix.sources`). Every call works whatever TensorFlow mode the caller's process is in.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from ckptfix import _quiet
from ckptfix.options import Options
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
        A :class:`RecalibrationReport`. Raises a :class:`~ckptfix.errors.CkptfixError` subclass on any user
        error, before anything is written.

    Batches run on ``devices`` (default: every visible GPU, else the CPU). When ``TF_CONFIG`` names a cluster,
    this process is one worker of it: it runs its share of the batches, the statistics are combined over the
    cluster, and only the chief (``report.worker == 0``) writes; docs/scaling-out.md.
    """
    from ckptfix import pipeline

    with _eager():
        return pipeline.recalibrate(checkpoint, data, Options.build(options, keywords, "recalibrate"))


def diagnose(checkpoint: str | Path, data, options: Options | None = None, **keywords) -> DiagnosisReport:
    """Measure how stale the stored statistics are, exactly as :func:`recalibrate` would, writing nothing.

    Takes :func:`recalibrate`'s options less the output ones. ``report.stale`` is the verdict; see
    :mod:`ckptfix.diagnostics.drift` for the per-layer metrics and thresholds.
    """
    from ckptfix import pipeline

    with _eager():
        return pipeline.diagnose(checkpoint, data, Options.build(options, keywords, "diagnose"))


def inspect(checkpoint: str | Path, options: Options | None = None, **keywords) -> InspectionReport:
    """List every BN layer of CKPT with its stored statistics and staleness flags; needs no data.

    Takes the model options of :func:`recalibrate` and ``against``: another file of the same kind (e.g. the
    pretrained checkpoint) whose identical statistics are flagged (not for frozen graphs).
    """
    from ckptfix import pipeline

    with _eager():
        return pipeline.inspect(checkpoint, Options.build(options, keywords, "inspect"))
