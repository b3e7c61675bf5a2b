"""The public API: :func:`recalibrate` a TF1 checkpoint's BatchNorm statistics. The CLI is a thin layer on it.

Data flow: locate the checkpoint and its ``.meta`` -> find the BN layers in the graph and their checkpoint
keys -> detect the input and training flag -> rewrite and import the graph, restore the checkpoint -> stream
calibration batches, pooling each layer's per-channel moments in float64 -> write a new checkpoint with only
the moving statistics replaced -> return a :class:`~ckptfix.report.RecalibrationReport`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ckptfix import _quiet
from ckptfix.checkpoints.locate import CheckpointFiles, locate_checkpoint
from ckptfix.checkpoints.writer import check_output_dir, default_output_dir, write_recalibrated_checkpoint
from ckptfix.data import PREPROCESSING, open_calibration_data
from ckptfix.errors import CheckpointError, CkptfixError, NoBatchNormError
from ckptfix.graph.batchnorm import BatchNormLayer, find_batchnorm_layers
from ckptfix.graph.feeds import detect_feeds
from ckptfix.graph.forward import ForwardModel
from ckptfix.graph.index import GraphIndex
from ckptfix.graph.meta import checkpoint_keys, load_meta_graph, partition_layout
from ckptfix.report import LayerReport, RecalibrationReport
from ckptfix.stats import Estimator, PooledMoments


def _compile(pattern: str | None, option: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise CkptfixError(f"{option} {pattern!r} is not a valid regular expression ({error}).") from None


def select_layers(layers: list[BatchNormLayer], include: str | None, exclude: str | None) -> list[BatchNormLayer]:
    """Layers whose scope name matches ``include`` (re.search) and not ``exclude``."""
    included, excluded = _compile(include, "--include"), _compile(exclude, "--exclude")
    chosen = [
        layer for layer in layers
        if (included is None or included.search(layer.name)) and not (excluded and excluded.search(layer.name))
    ]
    if not chosen:
        names = ", ".join(layer.name for layer in layers[:6]) + (" ..." if len(layers) > 6 else "")
        raise NoBatchNormError(f"--include/--exclude select none of the {len(layers)} BN layers ({names}).")
    return chosen


def _validate_options(batch_size: int, num_samples: int | None, estimator: str, preprocess: str) -> None:
    if batch_size < 1:
        raise CkptfixError(f"--batch-size must be at least 1 (got {batch_size}).")
    if num_samples is not None and num_samples < 1:
        raise CkptfixError(f"--num-samples must be at least 1 (got {num_samples}).")
    if estimator not in {e.value for e in Estimator}:
        raise CkptfixError(f"--estimator must be one of {', '.join(e.value for e in Estimator)} (got {estimator}).")
    if preprocess not in PREPROCESSING:
        raise CkptfixError(f"--preprocess must be one of {', '.join(PREPROCESSING)} (got {preprocess}).")


def _stored_statistics(files: CheckpointFiles, keys: dict[str, str], layers: list[BatchNormLayer]):
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(files.prefix))
        stored = {}
        for layer in layers:
            for variable in (layer.mean_variable, layer.variance_variable):
                key = keys.get(variable, variable)
                if not reader.has_tensor(key):
                    raise CheckpointError(
                        f"the checkpoint has no {key} (BN layer {layer.name}): pass --meta with the graph it was saved from."
                    )
                stored[variable] = np.asarray(reader.get_tensor(key), np.float64).reshape(-1)
    except tf.errors.OpError as error:
        raise CheckpointError(f"cannot read checkpoint {files.prefix}: {error.message.splitlines()[0]}") from None
    return stored


def _dropout_scopes(index: GraphIndex, layers: list[BatchNormLayer]) -> list[str]:
    upstream = index.ancestors([t for layer in layers for t in layer.inputs])
    return sorted({n.split("/dropout")[0] for n in upstream if "dropout" in n and index.nodes[n].op == "RandomUniform"})


def _progress_bar(enabled: bool, total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="sample", desc="calibrating", file=sys.stderr, leave=False)


def recalibrate(
    checkpoint: str | Path,
    data,
    *,
    output: str | Path | None = None,
    meta: str | Path | None = None,
    batch_size: int = 32,
    num_samples: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    input_name: str | None = None,
    training_flag: str | None = None,
    include: str | None = None,
    exclude: str | None = None,
    estimator: str = "pooled",
    preprocess: str = "inception",
    overwrite: bool = False,
    progress: bool = False,
    on_notice: Callable[[str], None] | None = None,
) -> RecalibrationReport:
    """Recompute the moving statistics of every (selected) BN layer and write a corrected checkpoint.

    Args:
        checkpoint: a checkpoint prefix, a folder with a ``checkpoint`` state file, or one file of the prefix.
        data: a folder or file of calibration samples (images, ``.npy``, ``.npz``), a numpy array ``(N, ...)``
            already preprocessed, or an iterable of batches (arrays, ``(inputs, labels)`` pairs, or dicts
            mapping the input name to an array).
        output: the folder to write; default ``<checkpoint folder>-recalibrated`` beside the input's folder.
        meta: the ``.meta`` graph, when it does not sit beside the prefix.
        batch_size, num_samples, shuffle, seed: how calibration batches are drawn.
        input_name, training_flag: tensor names overriding detection.
        include, exclude: regexes over BN layer scope names; unselected layers keep their bytes and run as saved.
        estimator: ``"pooled"`` (exact statistics of all values) or ``"batch-mean"`` (mean of per-batch ones).
        preprocess: image scaling preset (see :data:`ckptfix.data.PREPROCESSING`); arrays are used as given.
        overwrite: replace a non-empty ``output`` folder.
        progress: show a tqdm bar on stderr.
        on_notice: called with one-line notices (preprocessing used, training-mode ops active...).

    Returns:
        A :class:`RecalibrationReport`. Raises a :class:`CkptfixError` subclass on any user error, before
        anything is written.
    """
    _quiet.silence_tensorflow()
    _validate_options(batch_size, num_samples, estimator, preprocess)
    files = locate_checkpoint(checkpoint, meta)
    output_dir = check_output_dir(files, Path(output) if output is not None else default_output_dir(files), overwrite)
    meta_graph = load_meta_graph(files.meta)
    index = GraphIndex(meta_graph.graph_def)
    found = find_batchnorm_layers(index)
    if not found:
        raise NoBatchNormError(f"no BatchNorm layers in {files.meta.name}: nothing to recalibrate.")
    layers = select_layers(found, include, exclude)
    feeds = detect_feeds(index, layers, input_name, training_flag)
    keys = checkpoint_keys(meta_graph)
    stored = _stored_statistics(files, keys, layers)

    notices = []
    notify = on_notice or (lambda message: None)

    def notice(message: str) -> None:
        notices.append(message)
        notify(message)

    if feeds.training_flag is None:
        dropout = _dropout_scopes(index, layers)
        if dropout:
            notice(f"training mode is baked into the graph: dropout was active upstream of BN in {', '.join(dropout)}")
    switched = sum(not node.is_training for layer in layers for node in layer.fused_nodes)
    if switched and feeds.training_flag is None:
        notice(f"{switched} inference-mode fused BN node(s) switched to batch statistics")

    with ForwardModel(meta_graph, layers, feeds, str(files.prefix)) as model:
        batches = open_calibration_data(
            data,
            input_name=feeds.input,
            input_shape=model.input_shape,
            dtype=model.input_dtype,
            batch_size=batch_size,
            num_samples=num_samples,
            shuffle=shuffle,
            seed=seed,
            preprocess=preprocess,
        )
        if batches.images:
            notice(f"images preprocessed with --preprocess {preprocess}: {PREPROCESSING[preprocess][0]}")
        pooled = {layer.name: PooledMoments(stored[layer.mean_variable].size) for layer in layers}
        num_seen = num_batches = 0
        with _progress_bar(progress, batches.num_samples) as bar:
            for batch in batches:
                for name, moments in model.run(batch).items():
                    for moment in moments:
                        pooled[name].add(moment)
                num_seen += len(batch)
                num_batches += 1
                bar.update(len(batch))
    if num_seen == 0:
        raise CkptfixError("the calibration data yielded no samples: pass a folder or array with at least one sample.")

    new_values, reports = {}, []
    for layer in layers:
        mean, variance = pooled[layer.name].mean_and_variance(Estimator(estimator), bessel=layer.bessel)
        mean_key, variance_key = keys.get(layer.mean_variable, layer.mean_variable), keys.get(layer.variance_variable, layer.variance_variable)
        new_values[mean_key], new_values[variance_key] = mean, variance
        reports.append(
            LayerReport(
                name=layer.name,
                kind=layer.kind,
                channels=mean.size,
                mean_key=mean_key,
                variance_key=variance_key,
                variance_convention="bessel" if layer.bessel else "biased",
                count=pooled[layer.name].count,
                old_mean=stored[layer.mean_variable],
                new_mean=mean,
                old_variance=stored[layer.variance_variable],
                new_variance=variance,
            )
        )
    new_prefix = write_recalibrated_checkpoint(
        files, new_values, output_dir, layout=partition_layout(meta_graph), overwrite=overwrite
    )
    return RecalibrationReport(
        checkpoint=str(files.prefix),
        output_checkpoint=str(new_prefix),
        output_dir=str(output_dir),
        num_samples=num_seen,
        num_batches=num_batches,
        estimator=estimator,
        input_tensor=feeds.input,
        training_flag=feeds.training_flag,
        layers=reports,
        untouched_layers=[layer.name for layer in found if layer not in layers],
        notices=notices,
    )
