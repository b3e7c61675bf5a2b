"""The public API: :func:`recalibrate`, :func:`diagnose` and :func:`inspect`. The CLI is a thin layer on it.

Where the model comes from: Keras / TF2 files (``.keras``, ``.h5``, ``.weights.h5``, object-based
checkpoints, SavedModels) are handed to :mod:`ckptfix.keras.commands`; everything else is a TF1 graph: the
checkpoint's ``.meta``, the graph a ``--model`` function builds (:mod:`ckptfix.graph.model_fn`), or a frozen
GraphDef whose statistics constants are thawed into variables (:mod:`ckptfix.graph.frozen`).

Data flow of a measuring pass on a TF1 graph (shared by recalibrate and diagnose): find the BN layers in the
graph and their checkpoint keys -> detect the inputs and training flag -> rewrite and import the graph,
restore the checkpoint -> stream calibration batches, pooling each layer's per-channel moments in float64
(:mod:`ckptfix.measuring`) -> compare inference-mode outputs with batch-statistics outputs on the first
batches, with the stored and the recomputed statistics. recalibrate then writes a new checkpoint (or frozen
graph) with only the moving statistics replaced; diagnose writes nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckptfix import _quiet
from ckptfix.checkpoints.locate import CheckpointFiles, locate_checkpoint
from ckptfix.checkpoints.writer import check_output_dir, default_output_dir, write_recalibrated_checkpoint
from ckptfix.data import DataKeys, open_calibration_data
from ckptfix.data.batching import first_samples, samples_in
from ckptfix.diagnostics import agreement as output_agreement
from ckptfix.diagnostics.inspect import inspect_checkpoint, inspect_graph
from ckptfix.errors import CheckpointError, CkptfixError, NoBatchNormError
from ckptfix.graph.batchnorm import BatchNormLayer, find_batchnorm_layers, layer_tensors
from ckptfix.graph.feeds import detect_feeds
from ckptfix.graph.forward import ForwardModel
from ckptfix.graph.frozen import check_output_path, is_frozen_graph, thaw, write_recalibrated_graph
from ckptfix.graph.index import GraphIndex
from ckptfix.graph.inference import InferenceModel, NoInferenceMode
from ckptfix.graph.meta import checkpoint_keys, load_meta_graph, partition_layout
from ckptfix.graph.model_fn import build_meta_graph, resolve_function
from ckptfix.graph.outputs import resolve_output
from ckptfix.graph.safety import check_forward_ops
from ckptfix.measuring import check_batch_moments, layer_report, progress_bar, select_layers
from ckptfix.options import Options
from ckptfix.report import DiagnosisReport, InspectionReport, LayerReport, RecalibrationReport
from ckptfix.stats import PooledMoments


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


def _keras_format(checkpoint, options: Options) -> str | None:
    """The Keras / TF2 format to dispatch to (docs/keras.md), or None for the TF1 path."""
    from ckptfix.keras.formats import detect_model_format

    chosen = detect_model_format(checkpoint, options.meta) if options.model_format is None else options.model_format
    if chosen in (None, "tf1"):
        return None
    chosen = str(chosen)  # a plain name, as detected
    given = options.tf1_only()
    if given:
        raise CkptfixError(f"{given[0]} applies to TF1 graphs only; a {chosen} model is called with training=False.")
    return chosen


@dataclass
class _Measurement:
    """Everything one measuring pass found; the report fields plus the new values by checkpoint key."""

    layers: list[LayerReport]
    new_values: dict[str, np.ndarray]
    num_samples: int
    num_batches: int
    input_tensor: str
    training_flag: str | None
    untouched_layers: list[str]
    notices: list[str]
    agreement: output_agreement.Agreement | None
    input_tensors: list[str] = field(default_factory=list)
    partition_layout: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # data_source, samples_skipped, skipped_files

    def report_fields(self, files: CheckpointFiles, estimator: str) -> dict:
        return dict(
            checkpoint=str(files.prefix),
            num_samples=self.num_samples,
            num_batches=self.num_batches,
            estimator=estimator,
            input_tensor=self.input_tensor,
            input_tensors=self.input_tensors,
            training_flag=self.training_flag,
            layers=self.layers,
            untouched_layers=self.untouched_layers,
            notices=self.notices,
            agreement=self.agreement,
            **self.data,
        )


def _stream(model: ForwardModel, batches, layers, stored, output_name, agreement_samples: int, progress: bool):
    """Run every batch once (an array, or a dict keyed by input for several inputs); pool each layer's moments.
    Keeps the first ``agreement_samples`` samples."""
    pooled = {layer.name: PooledMoments(stored[layer.mean_variable].size) for layer in layers}
    kept: list[np.ndarray] = []
    num_seen = num_batches = 0
    with progress_bar(progress, batches.num_samples) as bar:
        for batch in batches:
            for name, moments in model.run(batch).items():
                for moment in moments:
                    check_batch_moments(name, moment, batches.describe_last)
                    pooled[name].add(moment)
            if output_name and num_seen < agreement_samples:
                kept.append(first_samples(batch, agreement_samples - num_seen))
            num_seen += samples_in(batch)
            num_batches += 1
            bar.update(samples_in(batch))
    return pooled, kept, num_seen, num_batches


def _agreement(meta_graph, layers, feeds, files, output_name, kept, batch_outputs, new_by_variable):
    """Inference-mode outputs on the kept batches with the stored, then the new statistics, vs batch mode."""
    with InferenceModel(meta_graph, layers, feeds, str(files.prefix), output_name) as inference:
        before = [inference.outputs(batch) for batch in kept]
        inference.load_statistics(new_by_variable)
        after = [inference.outputs(batch) for batch in kept]
    return output_agreement.compare(
        output_name, np.concatenate(batch_outputs), np.concatenate(before), np.concatenate(after)
    )


def _model_label(model) -> str:
    return f"--model {model}" if isinstance(model, str) else f"model {getattr(model, '__qualname__', model)}"


@contextlib.contextmanager
def _graph_source(checkpoint, options: Options):
    """``(files, meta_graph, frozen)`` for what the user passed as CHECKPOINT.

    A ``.pb`` / ``.pbtxt`` is thawed (``frozen`` is the :class:`~ckptfix.graph.frozen.FrozenGraph`, its
    temporary checkpoint removed on exit); with ``model`` the graph is built by that function
    (:mod:`ckptfix.graph.model_fn`); otherwise ``meta_graph`` is None and the ``.meta`` is read by :func:`_measure`.
    """
    meta, model = options.meta, options.model
    if is_frozen_graph(checkpoint):
        if meta is not None or model is not None:
            raise CkptfixError(f"{checkpoint} is a frozen graph: --meta and --model apply to checkpoints only.")
        with thaw(checkpoint) as frozen:
            yield frozen.files, frozen.meta_graph, frozen
    elif model is not None:
        if meta is not None:
            raise CkptfixError("pass either --meta (the saved graph) or --model (the function that builds it), not both.")
        files = locate_checkpoint(checkpoint, need_meta=False)
        model_options = dict(model_args=options.model_args, input_shape=options.input_shape, arg_scope=options.arg_scope)
        yield files, build_meta_graph(resolve_function(model), files.prefix, label=_model_label(model), **model_options), None
    else:
        yield locate_checkpoint(checkpoint, meta), None, None


def _frozen_report_fields(measured: _Measurement, files, options: Options, frozen) -> dict:
    """Report fields of a frozen graph's pass: the graph file as the checkpoint, and a notice when its BN
    layers were frozen in training mode (the repaired constants are then unused where it is deployed)."""
    fields = {**measured.report_fields(files, options.estimator.value), "checkpoint": str(frozen.path)}
    training = frozen.training_mode_layers if measured.training_flag is None else []
    if training:
        message = (f"{len(training)} BN node(s) of {frozen.path.name} were frozen in training mode ({training[0]}...): "
                   "they normalise with batch statistics and ignore these constants; freeze the model with is_training=False")
        fields["notices"] = [*fields["notices"], message]
        if options.on_notice is not None:
            options.on_notice(message)
    return fields


def _measure(files: CheckpointFiles, data, options: Options, meta_graph=None) -> _Measurement:
    """One pass over the calibration data: new statistics per layer, and output agreement before/after.

    ``meta_graph``: the graph already loaded (built by ``--model``, thawed from a frozen graph); default: the
    ``.meta`` of ``files``. The checkpoint is always restored from ``files.prefix``.
    """
    if meta_graph is None:
        meta_graph = load_meta_graph(files.meta)
    index = GraphIndex(meta_graph.graph_def)
    found = find_batchnorm_layers(index)
    if not found:
        where = files.meta.name if files.meta is not None else "the graph --model built"
        raise NoBatchNormError(f"no BatchNorm layers in {where}: nothing to recalibrate.")
    layers = select_layers(found, options.include, options.exclude)
    named = DataKeys(data, options.data_format)
    # inputs and flag of every BN layer: unselected ones run as saved in the agreement check's forward pass
    feeds = detect_feeds(index, found, options.input_name, options.training_flag, data_keys=named.keys)
    check_forward_ops(index, layer_tensors(index, layers), options.allow_unsafe_ops)
    keys = checkpoint_keys(meta_graph)
    stored = _stored_statistics(files, keys, layers)

    notices = []
    notify = options.on_notice or (lambda message: None)

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
            named.data,
            inputs=model.input_specs,
            batch_size=options.batch_size,
            num_samples=options.num_samples,
            shuffle=options.shuffle,
            seed=options.seed,
            preprocess=options.preprocess,
            on_warning=notice,
            **options.data_options,
        )
        if batches.images:
            notice(f"images preprocessed with --preprocess {getattr(options.preprocess, '__qualname__', options.preprocess)}: {batches.preprocessing}")
        output_name, output_notice = resolve_output(model.graph, model.inputs, options.output_tensor)
        if output_notice:
            notice(output_notice)
        pooled, kept, num_seen, num_batches = _stream(
            model, batches, layers, stored, output_name, options.agreement_samples, options.progress
        )
        if batches.merged_last:
            notice("the last batch had {} samples, fewer than half a batch: merged into the one before ({} samples)".format(*batches.merged_last))
        if num_seen == 0:
            raise CkptfixError("the calibration data yielded no samples: pass a folder or array with at least one sample.")
        batch_outputs = [model.outputs(batch, output_name) for batch in kept] if output_name else []

    reports = [layer_report(layer, pooled[layer.name], stored, keys, options.estimator) for layer in layers]
    new_values = {key: value for r in reports for key, value in ((r.mean_key, r.new_mean), (r.variance_key, r.new_variance))}
    new_by_variable = {
        variable: value
        for layer, r in zip(layers, reports)
        for variable, value in ((layer.mean_variable, r.new_mean), (layer.variance_variable, r.new_variance))
    }
    agreement = None
    if kept:
        try:
            agreement = _agreement(meta_graph, layers, feeds, files, output_name, kept, batch_outputs, new_by_variable)
        except NoInferenceMode as reason:
            notice(f"no output agreement: {reason} (training mode is baked into the graph)")
    return _Measurement(
        layers=reports,
        new_values=new_values,
        num_samples=num_seen,
        num_batches=num_batches,
        input_tensor=feeds.input,
        input_tensors=list(feeds.inputs),
        training_flag=feeds.training_flag,
        untouched_layers=[layer.name for layer in found if layer not in layers],
        notices=notices,
        agreement=agreement,
        partition_layout=partition_layout(meta_graph),
        data=dict(
            data_source=batches.source, samples_skipped=batches.samples_skipped, skipped_files=batches.skipped_files
        ),
    )


def recalibrate(checkpoint: str | Path, data, options: Options | None = None, **keywords) -> RecalibrationReport:
    """Recompute the moving statistics of every (selected) BN layer and write a corrected checkpoint.

    Args:
        checkpoint: a checkpoint prefix, a folder with a ``checkpoint`` state file, or one file of the prefix;
            or a frozen GraphDef (``.pb`` binary, ``.pbtxt`` text), repaired into a new GraphDef file; or a Keras /
            TF2 file (``.keras``, ``.h5``, ``.weights.h5``, object-based checkpoint, SavedModel; docs/keras.md).
        data: a folder or file of calibration samples (images, ``.npy``, ``.npz``, TFRecords), a numpy array
            ``(N, ...)`` already preprocessed, a ``tf.data.Dataset`` (of samples or batches), or an iterable of
            batches (arrays, ``(inputs, labels)`` pairs, or dicts mapping the input name to an array; a model
            with several inputs takes dicts, or ``.npz`` files, with one array per input).
        options, keywords: an :class:`~ckptfix.options.Options`, and/or its fields as keyword arguments
            (``batch_size=64``, ``output="fixed"``...; every field but ``against``; documented there).

    Returns:
        A :class:`RecalibrationReport`. Raises a :class:`CkptfixError` subclass on any user error, before
        anything is written.
    """
    _quiet.silence_tensorflow()
    options = Options.build(options, keywords, "recalibrate")
    keras_format = _keras_format(checkpoint, options)
    if keras_format is not None:
        from ckptfix.keras import commands as keras_commands

        return keras_commands.recalibrate(checkpoint, data, options, model_format=keras_format)
    output, overwrite = options.output, options.overwrite
    with _graph_source(checkpoint, options) as (files, meta_graph, frozen):
        if frozen is not None:
            output_path = check_output_path(frozen.path, output, overwrite)
        else:
            output_dir = check_output_dir(files, output if output is not None else default_output_dir(files), overwrite)
        measured = _measure(files, data, options, meta_graph=meta_graph)
        if frozen is not None:
            written = write_recalibrated_graph(frozen, measured.new_values, output_path, overwrite)
            fields = _frozen_report_fields(measured, files, options, frozen)
            return RecalibrationReport(**fields, output_checkpoint=str(written), output_dir=str(written.parent))
    new_prefix = write_recalibrated_checkpoint(
        files, measured.new_values, output_dir, layout=measured.partition_layout, overwrite=overwrite
    )
    return RecalibrationReport(
        **measured.report_fields(files, options.estimator.value), output_checkpoint=str(new_prefix),
        output_dir=str(output_dir),
    )


def diagnose(checkpoint: str | Path, data, options: Options | None = None, **keywords) -> DiagnosisReport:
    """Measure how stale the stored statistics are, exactly as :func:`recalibrate` would, writing nothing.

    Takes :func:`recalibrate`'s arguments less the output ones (``output``, ``overwrite``; see
    :class:`~ckptfix.options.Options`), frozen graphs and ``model`` included.
    ``report.stale`` is the verdict; see :mod:`ckptfix.diagnostics.drift` for the per-layer metrics and thresholds.
    """
    _quiet.silence_tensorflow()
    options = Options.build(options, keywords, "diagnose")
    keras_format = _keras_format(checkpoint, options)
    if keras_format is not None:
        from ckptfix.keras import commands as keras_commands

        return keras_commands.diagnose(checkpoint, data, options, model_format=keras_format)
    with _graph_source(checkpoint, options) as (files, meta_graph, frozen):
        measured = _measure(files, data, options, meta_graph=meta_graph)
    if frozen is not None:
        return DiagnosisReport(**_frozen_report_fields(measured, files, options, frozen))
    return DiagnosisReport(**measured.report_fields(files, options.estimator.value))


def inspect(checkpoint: str | Path, options: Options | None = None, **keywords) -> InspectionReport:
    """List every BN layer of ``checkpoint`` with its stored statistics and staleness flags; needs no data.

    Takes the model options of :class:`~ckptfix.options.Options` (``meta``, ``model`` & co., ``model_format``,
    ``architecture``, ``unsafe``) and ``against``: another checkpoint (e.g. the pretrained one) whose identical
    statistics are flagged (not for frozen graphs). ``checkpoint`` may be a frozen graph or a Keras / TF2 file.
    """
    _quiet.silence_tensorflow()
    options = Options.build(options, keywords, "inspect")
    keras_format = _keras_format(checkpoint, options)
    if keras_format is not None:
        from ckptfix.keras import commands as keras_commands

        return keras_commands.inspect(checkpoint, options, model_format=keras_format)
    meta, model, against = options.meta, options.model, options.against
    if model is None and not is_frozen_graph(checkpoint):
        return inspect_checkpoint(checkpoint, meta=meta, against=against)
    if against is not None and is_frozen_graph(checkpoint):
        raise CkptfixError("--against compares checkpoints; it is not available for a frozen graph.")
    with _graph_source(checkpoint, options) as (files, meta_graph, frozen):
        other = None if against is None else locate_checkpoint(against, need_meta=False).prefix
        return inspect_graph(
            meta_graph, files.prefix, checkpoint=str(frozen.path if frozen else files.prefix),
            meta=str(frozen.path) if frozen else f"built by {_model_label(model)}", against=other, against_label=against,
        )
