"""The public API: :func:`recalibrate`, :func:`diagnose` and :func:`inspect`. The CLI is a thin layer on it.

Where the model comes from: Keras / TF2 files (``.keras``, ``.h5``, ``.weights.h5``, object-based
checkpoints, SavedModels) are handed to :mod:`ckptfix.keras.commands`; everything else is a TF1 graph: the
checkpoint's ``.meta``, the graph a ``--model`` function builds (:mod:`ckptfix.graph.model_fn`), or a frozen
GraphDef whose statistics constants are thawed into variables (:mod:`ckptfix.graph.frozen`).

Data flow of a measuring pass on a TF1 graph (shared by recalibrate and diagnose): find the BN layers in the
graph and their checkpoint keys -> detect the inputs and training flag -> rewrite and import the graph once,
restore the checkpoint once (:class:`~ckptfix.graph.model.GraphModel`, both BN modes in one session) -> stream
calibration batches, pooling each layer's per-channel moments in float64 (:mod:`ckptfix.measuring`) and keeping
the first batches' batch-statistics outputs from the same runs -> compare them with inference-mode outputs,
with the stored and then the recomputed statistics assigned in the session. recalibrate then writes a new
checkpoint (or frozen graph) with only the moving statistics replaced; diagnose writes nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ckptfix import _quiet
from ckptfix.checkpoints.locate import CheckpointFiles, locate_checkpoint
from ckptfix.checkpoints.writer import check_output_dir, default_output_dir, write_recalibrated_checkpoint
from ckptfix.data import PREPROCESSING, DataKeys, open_calibration_data
from ckptfix.data.batching import first_samples, samples_in
from ckptfix.diagnostics import agreement as output_agreement
from ckptfix.diagnostics.inspect import inspect_checkpoint, inspect_graph
from ckptfix.errors import CheckpointError, CkptfixError, NoBatchNormError
from ckptfix.graph.batchnorm import BatchNormLayer, find_batchnorm_layers, layer_tensors
from ckptfix.graph.feeds import detect_feeds
from ckptfix.graph.frozen import check_output_path, is_frozen_graph, thaw, write_recalibrated_graph
from ckptfix.graph.index import GraphIndex
from ckptfix.graph.model import GraphModel
from ckptfix.graph.meta import checkpoint_keys, load_meta_graph, partition_layout
from ckptfix.graph.model_fn import build_meta_graph, resolve_function
from ckptfix.graph.outputs import resolve_output
from ckptfix.graph.safety import check_forward_ops
from ckptfix.measuring import check_batch_moments, layer_report, progress_bar, select_layers
from ckptfix.report import DiagnosisReport, InspectionReport, LayerReport, RecalibrationReport
from ckptfix.stats import Estimator, PooledMoments


def _validate_options(batch_size: int, num_samples: int | None, estimator: str, preprocess: str) -> None:
    if batch_size < 1:
        raise CkptfixError(f"--batch-size must be at least 1 (got {batch_size}).")
    if num_samples is not None and num_samples < 1:
        raise CkptfixError(f"--num-samples must be at least 1 (got {num_samples}).")
    if estimator not in {e.value for e in Estimator}:
        raise CkptfixError(f"--estimator must be one of {', '.join(e.value for e in Estimator)} (got {estimator}).")
    if isinstance(preprocess, str) and ":" not in preprocess and preprocess not in PREPROCESSING:
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


def _keras_format(checkpoint, meta, model_format: str | None, tf1_only: dict) -> str | None:
    """The Keras / TF2 format to dispatch to (docs/keras.md), or None for the TF1 path."""
    from ckptfix.keras.formats import MODEL_FORMATS, detect_model_format

    if model_format is not None and model_format not in MODEL_FORMATS:
        raise CkptfixError(f"--model-format must be one of {', '.join(MODEL_FORMATS)} (got {model_format}).")
    chosen = detect_model_format(checkpoint, meta) if model_format is None else model_format
    if chosen in (None, "tf1"):
        return None
    given = [option for option, value in tf1_only.items() if value]
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


def _stream(model: GraphModel, batches, layers, stored, output_name, agreement_samples: int, progress: bool):
    """Run every batch once (an array, or a dict keyed by input for several inputs); pool each layer's moments.
    Keeps the first ``agreement_samples`` samples and their batch-statistics outputs (from the same run)."""
    pooled = {layer.name: PooledMoments(stored[layer.mean_variable].size) for layer in layers}
    kept: list = []
    batch_outputs: list[np.ndarray] = []
    num_seen = num_batches = 0
    with progress_bar(progress, batches.num_samples) as bar:
        for batch in batches:
            wanted = agreement_samples - num_seen if output_name else 0
            moments, outputs = model.moments(batch, output_name if wanted > 0 else None)
            for name, per_input in moments.items():
                for moment in per_input:
                    check_batch_moments(name, moment, batches.describe_last)
                    pooled[name].add(moment)
            if wanted > 0:
                kept.append(first_samples(batch, wanted))
                batch_outputs.append(outputs[:wanted])
            num_seen += samples_in(batch)
            num_batches += 1
            bar.update(samples_in(batch))
    return pooled, kept, batch_outputs, num_seen, num_batches


def _agreement(model: GraphModel, output_name, kept, batch_outputs, new_by_variable):
    """Inference-mode outputs on the kept batches with the stored, then the new statistics, vs batch mode."""
    before = [model.inference_outputs(batch, output_name) for batch in kept]
    model.assign_statistics(new_by_variable)
    after = [model.inference_outputs(batch, output_name) for batch in kept]
    return output_agreement.compare(
        output_name, np.concatenate(batch_outputs), np.concatenate(before), np.concatenate(after)
    )


def _model_label(model) -> str:
    return f"--model {model}" if isinstance(model, str) else f"model {getattr(model, '__qualname__', model)}"


def _check_model_options(model, model_options: dict) -> None:
    if model is None and any(value for value in model_options.values()):
        raise CkptfixError("--num-classes, --model-arg, --input-shape and --arg-scope apply only with --model.")


@contextlib.contextmanager
def _graph_source(checkpoint, meta, model, model_options: dict):
    """``(files, meta_graph, frozen)`` for what the user passed as CHECKPOINT.

    A ``.pb`` / ``.pbtxt`` is thawed (``frozen`` is the :class:`~ckptfix.graph.frozen.FrozenGraph`, its
    temporary checkpoint removed on exit); with ``model`` the graph is built by that function
    (:mod:`ckptfix.graph.model_fn`); otherwise ``meta_graph`` is None and the ``.meta`` is read by :func:`_measure`.
    """
    _check_model_options(model, model_options)
    if is_frozen_graph(checkpoint):
        if meta is not None or model is not None:
            raise CkptfixError(f"{checkpoint} is a frozen graph: --meta and --model apply to checkpoints only.")
        with thaw(checkpoint) as frozen:
            yield frozen.files, frozen.meta_graph, frozen
    elif model is not None:
        if meta is not None:
            raise CkptfixError("pass either --meta (the saved graph) or --model (the function that builds it), not both.")
        files = locate_checkpoint(checkpoint, need_meta=False)
        yield files, build_meta_graph(resolve_function(model), files.prefix, label=_model_label(model), **model_options), None
    else:
        yield locate_checkpoint(checkpoint, meta), None, None


def _frozen_report_fields(measured: _Measurement, files, estimator: str, frozen, on_notice) -> dict:
    """Report fields of a frozen graph's pass: the graph file as the checkpoint, and a notice when its BN
    layers were frozen in training mode (the repaired constants are then unused where it is deployed)."""
    fields = {**measured.report_fields(files, estimator), "checkpoint": str(frozen.path)}
    training = frozen.training_mode_layers if measured.training_flag is None else []
    if training:
        message = (f"{len(training)} BN node(s) of {frozen.path.name} were frozen in training mode ({training[0]}...): "
                   "they normalise with batch statistics and ignore these constants; freeze the model with is_training=False")
        fields["notices"] = [*fields["notices"], message]
        if on_notice is not None:
            on_notice(message)
    return fields


def _measure(
    files: CheckpointFiles,
    data,
    *,
    meta_graph=None,
    batch_size: int,
    num_samples: int | None,
    shuffle: bool,
    seed: int,
    input_name: str | list[str] | None,
    training_flag: str | None,
    include: str | None,
    exclude: str | None,
    estimator: str,
    preprocess: str,
    output_tensor: str | None,
    agreement_samples: int,
    allow_unsafe_ops: bool,
    progress: bool,
    on_notice: Callable[[str], None] | None,
    data_options: dict | None = None,
) -> _Measurement:
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
    layers = select_layers(found, include, exclude)
    named = DataKeys(data, (data_options or {}).get("data_format"))
    # inputs and flag of every BN layer: unselected ones run as saved in the agreement check's forward pass
    feeds = detect_feeds(index, found, input_name, training_flag, data_keys=named.keys)
    check_forward_ops(index, layer_tensors(index, layers), allow_unsafe_ops)
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

    with GraphModel(meta_graph, layers, feeds, str(files.prefix)) as model:
        batches = open_calibration_data(
            named.data,
            inputs=model.input_specs,
            batch_size=batch_size,
            num_samples=num_samples,
            shuffle=shuffle,
            seed=seed,
            preprocess=preprocess,
            on_warning=notice,
            **(data_options or {}),
        )
        if batches.images:
            notice(f"images preprocessed with --preprocess {getattr(preprocess, '__qualname__', preprocess)}: {batches.preprocessing}")
        output_name, output_notice = resolve_output(model.graph, model.inputs, output_tensor)
        if output_notice:
            notice(output_notice)
        pooled, kept, batch_outputs, num_seen, num_batches = _stream(
            model, batches, layers, stored, output_name, agreement_samples, progress
        )
        if batches.merged_last:
            notice("the last batch had {} samples, fewer than half a batch: merged into the one before ({} samples)".format(*batches.merged_last))
        if num_seen == 0:
            raise CkptfixError("the calibration data yielded no samples: pass a folder or array with at least one sample.")

        reports = [layer_report(layer, pooled[layer.name], stored, keys, estimator) for layer in layers]
        new_values = {key: value for r in reports for key, value in ((r.mean_key, r.new_mean), (r.variance_key, r.new_variance))}
        new_by_variable = {
            variable: value
            for layer, r in zip(layers, reports)
            for variable, value in ((layer.mean_variable, r.new_mean), (layer.variance_variable, r.new_variance))
        }
        agreement = None
        if kept and model.inference_unavailable is not None:
            notice(f"no output agreement: {model.inference_unavailable} (training mode is baked into the graph)")
        elif kept:
            agreement = _agreement(model, output_name, kept, batch_outputs, new_by_variable)
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
    input_name: str | list[str] | None = None,
    training_flag: str | None = None,
    include: str | None = None,
    exclude: str | None = None,
    estimator: str = "pooled",
    preprocess: str | Callable = "inception",
    image_size: str | tuple[int, int] | None = None,
    central_crop: float | None = None,
    data_format: str | None = None,
    feature: str = "image/encoded",
    strict: bool = False,
    output_tensor: str | None = None,
    agreement_samples: int = 256,
    allow_unsafe_ops: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    on_notice: Callable[[str], None] | None = None,
    model: str | Callable | None = None,
    model_args: dict | None = None,
    input_shape: str | tuple | None = None,
    arg_scope: str | Callable | None = None,
    model_format: str | None = None,
    architecture: str | Path | None = None,
    unsafe: bool = False,
) -> RecalibrationReport:
    """Recompute the moving statistics of every (selected) BN layer and write a corrected checkpoint.

    Args:
        checkpoint: a checkpoint prefix, a folder with a ``checkpoint`` state file, or one file of the prefix;
            or a frozen GraphDef (``.pb`` binary, ``.pbtxt`` text), repaired into a new GraphDef file; or a Keras /
            TF2 file (``.keras``, ``.h5``, ``.weights.h5``, object-based checkpoint, SavedModel; docs/keras.md).
        data: a folder or file of calibration samples (images, ``.npy``, ``.npz``), a numpy array ``(N, ...)``
            already preprocessed, or an iterable of batches (arrays, ``(inputs, labels)`` pairs, or dicts
            mapping the input name to an array; a model with several inputs takes dicts, or ``.npz`` files,
            with one array per input).
        output: the folder to write; default ``<checkpoint folder>-recalibrated`` beside the input's folder.
            For a frozen graph: the file to write (a folder: the input's name inside it), default
            ``<name>-recalibrated.pb`` (or ``.pbtxt``) beside it; its suffix chooses binary or text.
            Keras ``.keras`` / ``.h5`` / ``.weights.h5``: the file to write, default ``<name>-recalibrated.<ext>``.
        meta: the ``.meta`` graph, when it does not sit beside the prefix.
        batch_size, num_samples, shuffle, seed: how calibration batches are drawn.
        input_name, training_flag: tensor names overriding detection. Several inputs: a list of names, or
            one string of comma-separated names (``"images,side"``); without it, every input candidate is fed
            when the data keys an array by each one's name (``.npz`` members, dict keys).
        include, exclude: regexes over BN layer scope names; unselected layers keep their bytes and run as saved.
        estimator: ``"pooled"`` (exact statistics of all values) or ``"batch-mean"`` (mean of per-batch ones).
        preprocess: image preprocessing: a preset name (see :mod:`ckptfix.data.preprocessing`),
            ``"package.module:function"`` or a callable (runs your code); arrays are used as given.
        image_size, central_crop, data_format, feature, strict: ``--image-size`` (``"HxW"`` or ``(H, W)``),
            ``--central-crop``, ``--format``, ``--feature`` (TFRecords) and ``--strict`` (skipped files are errors).
        data also accepts a ``tf.data.Dataset`` (of samples or batches) and TFRecord files or folders.
        output_tensor: the model output compared in the agreement check (default: detected final logits).
        agreement_samples: how many of the first calibration samples the agreement check uses.
        allow_unsafe_ops: run the forward pass even if it contains ops that execute Python or write files
            (see :mod:`ckptfix.graph.safety`); only for graphs you trust.
        overwrite: replace a non-empty ``output`` folder.
        progress: show a tqdm bar on stderr.
        on_notice: called with one-line notices (preprocessing used, training-mode ops active...).
        model: ``"package.module:function"`` or a callable (runs your code). For a TF1 checkpoint without a
            ``.meta``: the function that builds its graph, called like slim's nets_factory (see
            :mod:`ckptfix.graph.model_fn`); for a Keras / TF2 file without an architecture: returns the built model.
        model_args, input_shape, arg_scope: with a graph-building ``model``: keyword arguments for it
            (``num_classes`` among them), the per-sample input shape (``"HxWxC"``; default: its
            ``default_image_size``), and a slim arg_scope function to build it under.
        model_format, architecture, unsafe: Keras / TF2 models (docs/keras.md): the file format (default:
            detected from ``checkpoint``), a ``.keras`` / config ``.json`` architecture for files without one;
            ``unsafe`` turns Keras' safe mode off (Lambda layers run Python stored in the file).

    Returns:
        A :class:`RecalibrationReport`. Raises a :class:`CkptfixError` subclass on any user error, before
        anything is written.
    """
    _quiet.silence_tensorflow()
    _validate_options(batch_size, num_samples, estimator, preprocess)
    options = dict(
        batch_size=batch_size, num_samples=num_samples, shuffle=shuffle, seed=seed, input_name=input_name,
        include=include, exclude=exclude, estimator=estimator, preprocess=preprocess,
        agreement_samples=agreement_samples, progress=progress, on_notice=on_notice,
        data_options=dict(image_size=image_size, central_crop=central_crop, data_format=data_format, feature=feature, strict=strict),
    )
    keras_format = _keras_format(checkpoint, meta, model_format, {
        "--training-flag": training_flag, "--output-tensor": output_tensor, "--allow-unsafe-ops": allow_unsafe_ops,
        "--model-arg/--num-classes": model_args, "--input-shape": input_shape, "--arg-scope": arg_scope})
    if keras_format is not None:
        from ckptfix.keras import commands as keras_commands

        return keras_commands.recalibrate(
            checkpoint, data, output=output, overwrite=overwrite, model_format=keras_format, model=model,
            architecture=architecture, unsafe=unsafe, **options,
        )
    model_options = dict(model_args=model_args, input_shape=input_shape, arg_scope=arg_scope)
    with _graph_source(checkpoint, meta, model, model_options) as (files, meta_graph, frozen):
        if frozen is not None:
            output_path = check_output_path(frozen.path, output, overwrite)
        else:
            output_dir = check_output_dir(files, Path(output) if output is not None else default_output_dir(files), overwrite)
        measured = _measure(
            files, data, meta_graph=meta_graph, training_flag=training_flag, output_tensor=output_tensor,
            allow_unsafe_ops=allow_unsafe_ops, **options,
        )
        if frozen is not None:
            written = write_recalibrated_graph(frozen, measured.new_values, output_path, overwrite)
            fields = _frozen_report_fields(measured, files, estimator, frozen, on_notice)
            return RecalibrationReport(**fields, output_checkpoint=str(written), output_dir=str(written.parent))
    new_prefix = write_recalibrated_checkpoint(
        files, measured.new_values, output_dir, layout=measured.partition_layout, overwrite=overwrite
    )
    return RecalibrationReport(
        **measured.report_fields(files, estimator), output_checkpoint=str(new_prefix), output_dir=str(output_dir)
    )


def diagnose(
    checkpoint: str | Path,
    data,
    *,
    meta: str | Path | None = None,
    batch_size: int = 32,
    num_samples: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    input_name: str | list[str] | None = None,
    training_flag: str | None = None,
    include: str | None = None,
    exclude: str | None = None,
    estimator: str = "pooled",
    preprocess: str | Callable = "inception",
    image_size: str | tuple[int, int] | None = None,
    central_crop: float | None = None,
    data_format: str | None = None,
    feature: str = "image/encoded",
    strict: bool = False,
    output_tensor: str | None = None,
    agreement_samples: int = 256,
    allow_unsafe_ops: bool = False,
    progress: bool = False,
    on_notice: Callable[[str], None] | None = None,
    model: str | Callable | None = None,
    model_args: dict | None = None,
    input_shape: str | tuple | None = None,
    arg_scope: str | Callable | None = None,
    model_format: str | None = None,
    architecture: str | Path | None = None,
    unsafe: bool = False,
) -> DiagnosisReport:
    """Measure how stale the stored statistics are, exactly as :func:`recalibrate` would, writing nothing.

    Takes :func:`recalibrate`'s options (less the output ones), frozen graphs and ``model`` included.
    ``report.stale`` is the verdict; see :mod:`ckptfix.diagnostics.drift` for the per-layer metrics and thresholds.
    """
    _quiet.silence_tensorflow()
    _validate_options(batch_size, num_samples, estimator, preprocess)
    options = dict(
        batch_size=batch_size, num_samples=num_samples, shuffle=shuffle, seed=seed, input_name=input_name,
        include=include, exclude=exclude, estimator=estimator, preprocess=preprocess,
        agreement_samples=agreement_samples, progress=progress, on_notice=on_notice,
        data_options=dict(image_size=image_size, central_crop=central_crop, data_format=data_format, feature=feature, strict=strict),
    )
    keras_format = _keras_format(checkpoint, meta, model_format, {
        "--training-flag": training_flag, "--output-tensor": output_tensor, "--allow-unsafe-ops": allow_unsafe_ops,
        "--model-arg/--num-classes": model_args, "--input-shape": input_shape, "--arg-scope": arg_scope})
    if keras_format is not None:
        from ckptfix.keras import commands as keras_commands

        return keras_commands.diagnose(
            checkpoint, data, model_format=keras_format, model=model, architecture=architecture, unsafe=unsafe, **options
        )
    model_options = dict(model_args=model_args, input_shape=input_shape, arg_scope=arg_scope)
    with _graph_source(checkpoint, meta, model, model_options) as (files, meta_graph, frozen):
        measured = _measure(
            files, data, meta_graph=meta_graph, training_flag=training_flag, output_tensor=output_tensor,
            allow_unsafe_ops=allow_unsafe_ops, **options,
        )
    if frozen is not None:
        return DiagnosisReport(**_frozen_report_fields(measured, files, estimator, frozen, on_notice))
    return DiagnosisReport(**measured.report_fields(files, estimator))


def inspect(
    checkpoint: str | Path,
    *,
    meta: str | Path | None = None,
    against: str | Path | None = None,
    model: str | Callable | None = None,
    model_args: dict | None = None,
    input_shape: str | tuple | None = None,
    arg_scope: str | Callable | None = None,
    model_format: str | None = None,
    architecture: str | Path | None = None,
    unsafe: bool = False,
) -> InspectionReport:
    """List every BN layer of ``checkpoint`` with its stored statistics and staleness flags; needs no data.

    ``against``: another checkpoint (e.g. the pretrained one) whose identical statistics are flagged (not for
    frozen graphs). ``checkpoint`` may be a frozen graph or a Keras / TF2 file; ``model`` & co. as in
    :func:`recalibrate`.
    """
    _quiet.silence_tensorflow()
    keras_format = _keras_format(checkpoint, meta, model_format, {
        "--model-arg/--num-classes": model_args, "--input-shape": input_shape, "--arg-scope": arg_scope})
    if keras_format is not None:
        from ckptfix.keras import commands as keras_commands

        return keras_commands.inspect(
            checkpoint, model_format=keras_format, against=against, model=model, architecture=architecture, unsafe=unsafe
        )
    model_options = dict(model_args=model_args, input_shape=input_shape, arg_scope=arg_scope)
    _check_model_options(model, model_options)
    if model is None and not is_frozen_graph(checkpoint):
        return inspect_checkpoint(checkpoint, meta=meta, against=against)
    if against is not None and is_frozen_graph(checkpoint):
        raise CkptfixError("--against compares checkpoints; it is not available for a frozen graph.")
    with _graph_source(checkpoint, meta, model, model_options) as (files, meta_graph, frozen):
        other = None if against is None else locate_checkpoint(against, need_meta=False).prefix
        return inspect_graph(
            meta_graph, files.prefix, checkpoint=str(frozen.path if frozen else files.prefix),
            meta=str(frozen.path) if frozen else f"built by {_model_label(model)}", against=other, against_label=against,
        )
