"""recalibrate / diagnose / inspect for Keras and TF2 formats; :mod:`ckptfix.api` dispatches here.

The pass mirrors the TF1 one (``ckptfix.api._measure``; both use :mod:`ckptfix.measuring`): load the model from CKPT (see
:mod:`~ckptfix.keras.formats`) -> find its BN layers -> stream calibration batches through the model with
BN on batch statistics (:mod:`~ckptfix.keras.measure`), pooling each layer's moments in float64 -> compare
inference-mode outputs with the stored and the new statistics against the batch-statistics outputs on the
first batches. recalibrate then writes the same format with only the statistics replaced
(:mod:`~ckptfix.keras.storage`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ckptfix.data import open_calibration_data
from ckptfix.data.batching import first_samples, samples_in
from ckptfix.diagnostics import agreement as output_agreement
from ckptfix.errors import CkptfixError, NoBatchNormError, OutputError
from ckptfix.keras.batchnorm import KerasBatchNorm, find_batchnorm_layers
from ckptfix.keras.formats import KerasSource, load_source
from ckptfix.keras.measure import BatchStatisticsForward, InferenceForward
from ckptfix.keras.storage import check_keys, check_output, default_output, variable_keys, write_output, StoredValues
from ckptfix.measuring import check_batch_moments, layer_report, progress_bar, select_layers
from ckptfix.options import Options
from ckptfix.report import DiagnosisReport, InspectedLayer, InspectionReport, RecalibrationReport
from ckptfix.stats import PooledMoments


@dataclass
class _KerasMeasurement:
    fields: dict
    source: KerasSource
    layers: list[KerasBatchNorm]
    new_values: dict[str, np.ndarray]
    keys: dict[int, str] = field(default_factory=dict)


def _input_specs(model, input_name: tuple[str, ...] | None) -> list:
    """One :class:`InputSpec` per model input (named as the Keras inputs: the keys of ``.npz`` data / dicts);
    ``--input`` renames the input of a one-input model."""
    from ckptfix.data import InputSpec

    inputs = list(getattr(model, "inputs", None) or [])
    if input_name is not None and (len(input_name) > 1 or len(inputs) > 1):
        raise CkptfixError(f"--input names one input, but the model has {len(inputs)} (fed by their names): leave it out.")
    name = input_name[0] if input_name else None
    if not inputs:  # a subclassed model: the shape comes from the data
        return [InputSpec(name or "input", None, np.dtype(np.float32))]
    return [
        InputSpec(name or getattr(tensor, "name", None) or f"input_{k}",
                  tuple(tensor.shape), np.dtype(getattr(tensor.dtype, "name", tensor.dtype)))
        for k, tensor in enumerate(inputs)
    ]


def _model_inputs(batch, specs: list):
    """What the model is called with: the array, or the arrays in the model's input order."""
    return batch if len(specs) == 1 else [batch[spec.name] for spec in specs]


def _load(checkpoint, model_format: str, options: Options, include, exclude):
    source = load_source(checkpoint, model_format, model=options.model, architecture=options.architecture,
                         unsafe=options.unsafe)
    found = find_batchnorm_layers(source.model, source.legacy_bessel)
    if not found:
        raise NoBatchNormError(f"no BatchNormalization layers in the model of {source.path}: nothing to recalibrate.")
    layers = select_layers(found, include, exclude)
    keys = variable_keys(source)
    check_keys(source, keys, list(source.model.weights))
    return source, found, layers, keys


def _stored(layers: list[KerasBatchNorm]) -> dict[int, np.ndarray]:
    """Each statistics variable's loaded value (float64, flat), by id(variable)."""
    values = {}
    for bn in layers:
        for variable in (bn.mean_variable, bn.variance_variable):
            values[id(variable)] = np.asarray(variable.numpy(), np.float64).reshape(-1)
    return values


def _measure(
    checkpoint, data, options: Options, model_format: str, on_loaded: Callable[[KerasSource], None] | None = None,
) -> _KerasMeasurement:
    notices: list[str] = []

    def notice(message: str) -> None:
        notices.append(message)
        (options.on_notice or (lambda m: None))(message)

    source, found, layers, keys = _load(checkpoint, model_format, options, options.include, options.exclude)
    if on_loaded is not None:
        on_loaded(source)
    stored = _stored(layers)
    specs = _input_specs(source.model, options.input_name)
    batches = open_calibration_data(
        data, inputs=specs, batch_size=options.batch_size, num_samples=options.num_samples, shuffle=options.shuffle,
        seed=options.seed, preprocess=options.preprocess, on_warning=notice, **options.data_options,
    )
    forward = BatchStatisticsForward(source.model, layers)
    pooled = {bn.name: PooledMoments(stored[id(bn.mean_variable)].size) for bn in layers}
    kept, batch_outputs, num_seen, num_batches = [], [], 0, 0
    with progress_bar(options.progress, batches.num_samples) as bar:
        for batch in batches:
            moments, outputs = forward.run(_model_inputs(batch, specs))
            for name, calls in moments.items():
                for moment in calls:
                    check_batch_moments(name, moment, batches.describe_last)
                    pooled[name].add(moment)
            if num_seen < options.agreement_samples:
                kept.append(_model_inputs(first_samples(batch, options.agreement_samples - num_seen), specs))
                batch_outputs.append(outputs.numpy()[: options.agreement_samples - num_seen])
            num_seen += samples_in(batch)
            num_batches += 1
            bar.update(samples_in(batch))
    if batches.images:
        notice(f"images preprocessed with --preprocess {getattr(options.preprocess, '__qualname__', options.preprocess)}: {batches.preprocessing}")
    if batches.merged_last:
        notice("the last batch had {} samples, fewer than half a batch: merged into the one before ({} samples)".format(*batches.merged_last))

    # The layer report reads stored statistics and keys by "variable"; here a variable is named by its id.
    key_by_id = {id(v): keys[id(v)] for bn in layers for v in (bn.mean_variable, bn.variance_variable)}
    reports = [
        layer_report(_AsGraphLayer(bn), pooled[bn.name], stored, key_by_id, options.estimator) for bn in layers
    ]
    new_values = {key: value for r in reports for key, value in ((r.mean_key, r.new_mean), (r.variance_key, r.new_variance))}
    new_by_id = {
        id(variable): (variable, value)
        for bn, r in zip(layers, reports)
        for variable, value in ((bn.mean_variable, r.new_mean), (bn.variance_variable, r.new_variance))
    }
    agreement = None
    if kept:
        inference = InferenceForward(source.model)
        before = np.concatenate([inference.outputs(batch) for batch in kept])
        with inference.using(new_by_id):
            after = np.concatenate([inference.outputs(batch) for batch in kept])
        agreement = output_agreement.compare("output", np.concatenate(batch_outputs), before, after)
    fields = dict(
        checkpoint=str(source.path),
        num_samples=num_seen,
        num_batches=num_batches,
        estimator=options.estimator.value,
        input_tensor=",".join(spec.name for spec in specs),
        input_tensors=[spec.name for spec in specs],
        training_flag=None,
        layers=reports,
        untouched_layers=[bn.name for bn in found if bn not in layers],
        notices=notices,
        agreement=agreement,
        data_source=batches.source,
        samples_skipped=batches.samples_skipped,
        skipped_files=batches.skipped_files,
        model_format=source.model_format,
    )
    return _KerasMeasurement(fields, source, layers, new_values, keys)


class _AsGraphLayer:
    """A :class:`KerasBatchNorm` seen through the attributes :func:`ckptfix.measuring.layer_report` reads."""

    def __init__(self, bn: KerasBatchNorm) -> None:
        self.name, self.kind, self.bessel = bn.name, bn.kind, bn.bessel
        self.mean_variable, self.variance_variable = id(bn.mean_variable), id(bn.variance_variable)


def _verifier(measured: _KerasMeasurement, unsafe: bool) -> Callable[[Path], None]:
    """Load the staged output with the format's ordinary call; every weight must be as expected."""
    source = measured.source
    replaced = {id(v): v for bn in measured.layers for v in (bn.mean_variable, bn.variance_variable)}
    expected = []
    for variable in source.model.weights:
        value = np.asarray(variable.numpy())
        key = measured.keys.get(id(variable))
        if id(variable) in replaced:
            value = np.asarray(measured.new_values[key], np.float64).astype(value.dtype).reshape(value.shape)
        expected.append(value)

    def verify(staged: Path) -> None:
        import keras

        fmt = source.model_format
        if source.loader == "tf_keras.models.load_model":
            import tf_keras

            reloaded = tf_keras.models.load_model(str(staged), compile=False, safe_mode=not unsafe).weights
        elif source.loader in ("keras.saving.load_model", "keras.models.load_model"):
            reloaded = keras.saving.load_model(str(staged), compile=False, safe_mode=not unsafe).weights
        elif fmt in ("weights-h5", "h5"):
            source.model.load_weights(str(staged))
            reloaded = source.model.weights
        else:
            from ckptfix.keras.storage import restore_object_checkpoint

            restore_object_checkpoint(source.model, staged / "variables" / "variables" if fmt == "savedmodel" else staged)
            reloaded = source.model.weights
        values = [np.asarray(v.numpy()) for v in reloaded]
        if len(values) != len(expected) or any(a.dtype != b.dtype or a.tobytes() != b.tobytes() for a, b in zip(values, expected)):
            raise OutputError(f"the written {fmt} output did not load back as expected; nothing was kept.")

    return verify


def recalibrate(checkpoint, data, options: Options, *, model_format: str) -> RecalibrationReport:
    """Measure, then write the same format with the new statistics (see :func:`ckptfix.api.recalibrate`)."""
    destinations = []
    output, overwrite = options.output, options.overwrite

    def check(source: KerasSource) -> None:  # before the pass: a bad -o fails fast
        destinations.append(check_output(source, output if output is not None else default_output(source), overwrite))

    measured = _measure(checkpoint, data, options, model_format, on_loaded=check)
    destination = destinations[0]
    written = write_output(measured.source, measured.new_values, destination, overwrite, _verifier(measured, options.unsafe))
    return RecalibrationReport(**measured.fields, output_checkpoint=str(written), output_dir=str(destination))


def diagnose(checkpoint, data, options: Options, *, model_format: str) -> DiagnosisReport:
    """Measure only (see :func:`ckptfix.api.diagnose`)."""
    measured = _measure(checkpoint, data, options, model_format)
    return DiagnosisReport(**measured.fields)


def inspect(checkpoint, options: Options, *, model_format: str) -> InspectionReport:
    """Every BN layer of a Keras / TF2 file with its stored statistics and flags (see :func:`ckptfix.api.inspect`)."""
    source, layers, _, keys = _load(checkpoint, model_format, options, None, None)
    other, against = None, options.against
    if against is not None:
        other_source = load_source(against, model_format, model=options.model, architecture=options.architecture,
                                   unsafe=options.unsafe)
        other = StoredValues(other_source)
    inspected = []
    with (other or _Nothing()) as other_values:
        for bn in layers:
            mean, variance = bn.mean_variable.numpy(), bn.variance_variable.numpy()
            mean_key, variance_key = keys[id(bn.mean_variable)], keys[id(bn.variance_variable)]
            flags = []
            if np.all(mean == 0) and np.all(variance == 1):
                flags.append("initial")
            if other_values is not None and other_values.has(mean_key) and other_values.has(variance_key):
                if other_values.get(mean_key).tobytes() == mean.tobytes() and \
                        other_values.get(variance_key).tobytes() == variance.tobytes():
                    flags.append("same-as-against")
            m64, v64 = mean.astype(np.float64).reshape(-1), variance.astype(np.float64).reshape(-1)
            inspected.append(InspectedLayer(
                name=bn.name, kind=bn.kind, channels=int(mean.size), dtype=str(mean.dtype),
                mean_key=mean_key, variance_key=variance_key,
                mean_summary=(float(m64.min()), float(m64.mean()), float(m64.max())),
                variance_summary=(float(v64.min()), float(v64.mean()), float(v64.max())),
                flags=flags,
            ))
    return InspectionReport(str(source.path), "", None if against is None else str(against), inspected,
                            model_format=source.model_format)


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None
