"""Inspect a checkpoint's BN layers without data: where their statistics live, what they hold, and whether they
carry the signature of statistics that never moved.

Flags: ``initial`` when every moving mean is exactly 0 and every moving variance exactly 1 (the initial values:
the update ops never ran); ``same-as-against`` when both tensors are byte-identical to those of the checkpoint
given with ``--against`` (e.g. the pretrained one the fine-tuning started from). Only the index, the graph and
the statistics tensors themselves are read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptfix.io.locate import locate_checkpoint
from ckptfix.errors import CheckpointError, NoBatchNormError
from ckptfix.graph.batchnorm import find_batchnorm_layers
from ckptfix.graph.index import GraphIndex
from ckptfix.graph.meta import checkpoint_keys, load_meta_graph
from ckptfix.report import InspectedLayer, InspectionReport


def _summary(values: np.ndarray) -> tuple[float, float, float]:
    return float(values.min()), float(values.mean()), float(values.max())


def _reader(prefix: Path):
    import tensorflow as tf

    try:
        return tf.train.load_checkpoint(str(prefix))
    except (tf.errors.OpError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {prefix}: {str(error).strip().splitlines()[0]}") from None


def inspect_checkpoint(checkpoint, *, meta=None, against=None) -> InspectionReport:
    """List the BN layers of ``checkpoint`` with their stored statistics and staleness flags."""
    files = locate_checkpoint(checkpoint, meta)
    other = None if against is None else locate_checkpoint(against, meta=files.meta).prefix
    return inspect_graph(
        load_meta_graph(files.meta), files.prefix, checkpoint=str(files.prefix), meta=str(files.meta),
        against=other, against_label=against,
    )


def inspect_graph(meta_graph, prefix: Path, *, checkpoint: str, meta: str, against: Path | None = None,
                  against_label=None) -> InspectionReport:
    """:func:`inspect_checkpoint` on a graph already loaded (``--model``, a thawed frozen graph); the statistics
    are read from ``prefix``. ``checkpoint`` / ``meta`` label the report."""
    layers = find_batchnorm_layers(GraphIndex(meta_graph.graph_def))
    if not layers:
        raise NoBatchNormError(f"no BatchNorm layers in {Path(meta).name}: nothing to inspect.")
    keys = checkpoint_keys(meta_graph)
    reader = _reader(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    other = None if against is None else _reader(against)
    inspected = []
    for layer in layers:
        mean_key = keys.get(layer.mean_variable, layer.mean_variable)
        variance_key = keys.get(layer.variance_variable, layer.variance_variable)
        if not (reader.has_tensor(mean_key) and reader.has_tensor(variance_key)):
            raise CheckpointError(f"the checkpoint has no {mean_key}: pass --meta with the graph it was saved from.")
        mean, variance = reader.get_tensor(mean_key), reader.get_tensor(variance_key)
        flags = []
        if np.all(mean == 0) and np.all(variance == 1):
            flags.append("initial")
        if other is not None and other.has_tensor(mean_key) and other.has_tensor(variance_key):
            if other.get_tensor(mean_key).tobytes() == mean.tobytes() and \
                    other.get_tensor(variance_key).tobytes() == variance.tobytes():
                flags.append("same-as-against")
        inspected.append(
            InspectedLayer(
                name=layer.name,
                kind=layer.kind,
                channels=int(mean.size),
                dtype=dtypes[mean_key].name,
                mean_key=mean_key,
                variance_key=variance_key,
                mean_summary=_summary(mean.astype(np.float64)),
                variance_summary=_summary(variance.astype(np.float64)),
                flags=flags,
            )
        )
    return InspectionReport(checkpoint, meta, None if against_label is None else str(against_label), inspected)
