"""The one measuring pipeline every model source runs through.

    locate + open the source  ->  choose BN layers  ->  one session (one import, one restore)
      ->  stream batches: per-batch per-channel moments, pooled in float64  ->  new statistics per layer
      ->  output agreement (inference mode with the stored, then the new statistics, vs batch statistics)
      ->  write atomically (recalibrate only)  ->  typed report

Sources (:mod:`ckptfix.sources`) differ only in how they load a model, measure a batch and write a file; the
batch loop, the checks on each batch, the estimator, the agreement check, the notices and the report fields
are here, once. Where batches run is an execution mode (:mod:`ckptfix.scaling`): one session per device, the
results pooled in batch order; with a ``TF_CONFIG`` cluster, this worker's share of the batches, the partial
sums combined over the cluster, and only the chief writes.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ckptfix.data import DataKeys, open_calibration_data
from ckptfix.data.batching import first_samples, samples_in
from ckptfix.diagnostics import agreement as output_agreement
from ckptfix.errors import CkptfixError, DataError, NoBatchNormError
from ckptfix.interrupts import interrupts_between_steps
from ckptfix.options import Options
from ckptfix.report import (DeviceReport, DiagnosisReport, InspectedLayer, InspectionReport, LayerReport,
                            RecalibrationReport)
from ckptfix.scaling import Cluster, DevicePool, join_cluster, resolve_devices
from ckptfix.sources import open_source
from ckptfix.sources.base import Layer, Session, Source
from ckptfix.stats import Estimator, PooledMoments


class Notices:
    """One-line notices of a run: kept for the report, and passed on as they come (the CLI prints them)."""

    def __init__(self, on_notice: Callable[[str], None] | None) -> None:
        self.messages: list[str] = []
        self._forward = on_notice

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        if self._forward is not None:
            self._forward(message)


def select_layers(layers: Sequence[Layer], include: str | None, exclude: str | None) -> list[Layer]:
    """Layers whose scope name matches ``include`` (re.search) and not ``exclude``."""
    included = None if include is None else re.compile(include)
    excluded = None if exclude is None else re.compile(exclude)
    chosen = [
        layer for layer in layers
        if (included is None or included.search(layer.name)) and not (excluded and excluded.search(layer.name))
    ]
    if not chosen:
        names = ", ".join(layer.name for layer in layers[:6]) + (" ..." if len(layers) > 6 else "")
        raise NoBatchNormError(f"--include/--exclude select none of the {len(layers)} BN layers ({names}).")
    return chosen


def check_batch_moments(layer: str, moments, describe_batch: Callable[[], str]) -> None:
    """Refuse a batch whose moments would corrupt ``layer``'s statistics: non-finite, or one value per channel.

    With one value per channel (a single sample through a dense BN layer) the batch variance is 0 and BN
    outputs zeros, so this layer and every later one would be calibrated on garbage.
    """
    if not (np.isfinite(moments.mean).all() and np.isfinite(moments.m2).all()):
        raise DataError(
            f"BN layer {layer} got NaN or Inf statistics from {describe_batch()}: check those inputs "
            "(the inputs themselves are finite, so the model overflows on them)."
        )
    if moments.count == 1:
        raise DataError(
            f"BN layer {layer} sees a single value per channel in {describe_batch()}, so its batch variance "
            "would be 0: use --batch-size 2 or more and at least 2 samples."
        )


def _progress_bar(enabled: bool, total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="sample", desc="calibrating", file=sys.stderr, leave=False)


def _layer_report(layer: Layer, pooled: PooledMoments, estimator: Estimator) -> LayerReport:
    """The layer's new statistics in its own variance convention, next to the stored ones."""
    mean, variance = pooled.mean_and_variance(estimator, bessel=layer.bessel)
    if not (np.isfinite(mean).all() and np.isfinite(variance).all()):  # never write non-finite statistics
        raise DataError(f"BN layer {layer.name}: the pooled statistics are not finite (overflow?): nothing was written.")
    return LayerReport(
        name=layer.name,
        kind=layer.kind,
        channels=mean.size,
        mean_key=layer.mean_key,
        variance_key=layer.variance_key,
        variance_convention="bessel" if layer.bessel else "biased",
        count=pooled.count,
        old_mean=layer.stored_mean,
        new_mean=mean,
        old_variance=layer.stored_variance,
        new_variance=variance,
        **({} if layer.epsilon is None else {"epsilon": layer.epsilon}),
    )


@dataclass
class _Stream:
    """What one pass over the calibration data gathered."""

    pooled: dict[str, PooledMoments]
    kept: list = field(default_factory=list)  # the first samples' batches, for the agreement check
    kept_outputs: list = field(default_factory=list)  # their outputs with BN on batch statistics
    num_samples: int = 0
    num_batches: int = 0
    devices: dict[str, DeviceReport] = field(default_factory=dict)  # what each device of this worker took


def _stream(pool: DevicePool, batches, layers: list[Layer], keep: int, progress: bool, cluster: Cluster) -> _Stream:
    """Run every batch of this worker's share once (``cluster.owns``), on the pool's devices; pool each layer's
    moments in batch order; keep the share's first ``keep`` samples and their outputs."""
    seen = _Stream({layer.name: PooledMoments(layer.channels) for layer in layers},
                   devices={device: DeviceReport(device, cluster.rank) for device, _ in pool.sessions})

    def share():
        submitted = 0
        for index, batch in enumerate(batches):
            if cluster.owns(index):
                last = getattr(batches, "last", None)  # names this batch in errors, whenever they are raised
                yield batch, submitted < keep, batches.describe_last if last is None else last.describe
                submitted += samples_in(batch)

    with interrupts_between_steps() as check_interrupt, \
            _progress_bar(progress, batches.num_samples if cluster.size == 1 else None) as bar:
        for ran in pool.run(share()):
            check_interrupt()  # Ctrl-C between batches: inside a TensorFlow call it can be lost
            wanted = keep - seen.num_samples
            for name, calls in ran.moments.items():
                for moment in calls:
                    check_batch_moments(name, moment, ran.describe)
                    seen.pooled[name].add(moment)
            if wanted > 0:
                seen.kept.append(first_samples(ran.batch, wanted))
                seen.kept_outputs.append(first_samples(ran.output if isinstance(ran.output, dict) else np.asarray(ran.output), wanted))
            samples = samples_in(ran.batch)
            seen.num_samples += samples
            seen.num_batches += 1
            seen.devices[ran.device].samples += samples
            seen.devices[ran.device].batches += 1
            bar.update(samples)
        check_interrupt()
    return seen


def _agreement(session: Session, stream: _Stream, reports: list[LayerReport]):
    """Inference-mode outputs on the kept batches with the stored, then the new statistics, vs batch mode (an
    output array per batch, or a dict of them for a model with several outputs)."""
    join = output_agreement.concatenate
    before = join([session.inference_outputs(batch) for batch in stream.kept])
    session.assign_statistics({r.name: (r.new_mean, r.new_variance) for r in reports})
    after = join([session.inference_outputs(batch) for batch in stream.kept])
    return output_agreement.compare(session.output_name, join(stream.kept_outputs), before, after)


#: RMS over channels of the first BN layer's mean shift, in stored standard deviations, above which the
#: calibration data looks preprocessed differently from the training data
MISMATCH_SIGMAS = 10.0


def preprocessing_mismatch(first: Layer, reports: Sequence[LayerReport]) -> str | None:
    """A warning when the model's first BN layer (network order) sees inputs unlike those of training.

    Its shift is ``z_c = (new_mean_c - stored_mean_c) / sqrt(stored_var_c + epsilon)`` per channel; the warning
    is given when ``sqrt(mean_c z_c^2) > MISMATCH_SIGMAS``. Staleness moves a first layer little (it sees the
    data directly), a wrong input scale or offset moves it by many standard deviations. Not checked when the
    layer was not measured or holds the initial 0/1 statistics (nothing to compare with).
    """
    report = next((r for r in reports if r.name == first.name), None)
    if report is None or (np.all(report.old_mean == 0) and np.all(report.old_variance == 1)):
        return None
    scale = np.sqrt(np.asarray(report.old_variance, np.float64) + report.epsilon)
    shift = (np.asarray(report.new_mean, np.float64) - report.old_mean) / scale
    rms = float(np.sqrt(np.mean(shift**2)))
    if not rms > MISMATCH_SIGMAS:
        return None
    return (f"the first BN layer {report.name} sees a mean {rms:.0f} stored standard deviations from the stored one "
            "(RMS over channels): the calibration data is likely preprocessed unlike the training data; "
            "check --preprocess (or the arrays' scale)")


@dataclass
class Measurement:
    """A measuring pass's results: the report fields, and the new values by checkpoint key."""

    fields: dict
    new_values: dict[str, np.ndarray]


def _sessions(stack: contextlib.ExitStack, source: Source, layers, data_keys, options: Options, notice) -> DevicePool:
    """One session per device of ``options.devices`` (:func:`ckptfix.scaling.resolve_devices`); the first one
    gives the notices and serves the agreement check. The default on a one-device machine leaves placement to
    TensorFlow, as a run without ``--devices`` always did."""
    devices = resolve_devices(options.devices)
    placed = devices if len(devices) > 1 or options.devices is not None else [None]
    sessions = []
    for k, device in enumerate(placed):
        said = notice if k == 0 else _quiet_notice
        session = stack.enter_context(source.session(layers, data_keys, options, said, device=device))
        sessions.append((device or devices[0], session))
    return DevicePool(sessions)


def _quiet_notice(message: str) -> None:
    """The other devices' sessions repeat the first one's notices: dropped."""


def measure(source: Source, data, options: Options, cluster: Cluster | None = None) -> Measurement:
    """One pass over the calibration data: new statistics per chosen layer, and the output agreement (run by
    the chief of a cluster)."""
    cluster = cluster or Cluster()
    notice = Notices(options.on_notice)
    for message in source.notices:
        notice(message)
    if cluster.size > 1:
        notice(f"{cluster.describe()} of the TF_CONFIG cluster: runs batches i with i mod {cluster.size} = "
               f"{cluster.rank}; the chief (worker 0) writes and reports")
    layers = select_layers(source.layers, options.include, options.exclude)
    named = DataKeys(data, options.data_format)
    with contextlib.ExitStack() as stack:
        pool = _sessions(stack, source, layers, named.keys, options, notice)
        session = pool.sessions[0][1]
        batches = open_calibration_data(
            named.data,
            inputs=session.input_specs,
            batch_size=options.batch_size,
            num_samples=options.num_samples,
            shuffle=options.shuffle,
            seed=options.seed,
            preprocess=options.preprocess,
            on_warning=notice,
            **options.data_options,
        )
        if batches.images:
            preset = getattr(options.preprocess, "__qualname__", options.preprocess)
            what = "integer arrays taken as 0..255 images," if batches.integer_images else "images"
            given = " (--preprocess raw uses them as given)" if batches.integer_images and preset != "raw" else ""
            notice(f"{what} preprocessed with --preprocess {preset}: {batches.preprocessing}{given}")
        keep = options.agreement_samples if session.output_name and cluster.chief else 0
        stream = _stream(pool, batches, layers, keep, options.progress, cluster)
        if batches.merged_last:
            notice("the last batch had {} samples, fewer than half a batch: merged into the one before ({} samples)"
                   .format(*batches.merged_last))
        pooled, shares = cluster.combine(stream.pooled, [share.to_dict() for share in stream.devices.values()])
        devices = [DeviceReport(**share) for share in shares]
        num_samples = sum(device.samples for device in devices)
        if num_samples == 0:
            raise CkptfixError("the calibration data yielded no samples: pass a folder or array with at least one sample.")
        reports = [_layer_report(layer, pooled[layer.name], options.estimator) for layer in layers]
        mismatch = preprocessing_mismatch(source.layers[0], reports)
        if mismatch:
            notice(mismatch)
        agreement = None
        if stream.kept:
            if session.inference_unavailable:
                notice(f"no output agreement: {session.inference_unavailable} (training mode is baked into the graph)")
            else:
                agreement = _agreement(session, stream, reports)
        fields = dict(
            checkpoint=source.label,
            num_samples=num_samples,
            num_batches=sum(device.batches for device in devices),
            estimator=Estimator(options.estimator).value,
            input_tensor=",".join(session.input_names),
            input_tensors=list(session.input_names),
            training_flag=session.training_flag,
            layers=reports,
            untouched_layers=[layer.name for layer in source.layers if layer not in layers],
            notices=notice.messages,
            agreement=agreement,
            data_source=batches.source,
            samples_skipped=batches.samples_skipped,
            skipped_files=batches.skipped_files,
            model_format=source.model_format,
            cause=source.cause(),
            devices=devices,
            worker=cluster.rank,
            num_workers=cluster.size,
        )
    new_values = {key: value for r in reports for key, value in ((r.mean_key, r.new_mean), (r.variance_key, r.new_variance))}
    return Measurement(fields, new_values)


def recalibrate(checkpoint, data, options: Options) -> RecalibrationReport:
    """Measure, then write a copy of CKPT with only the chosen layers' moving statistics replaced (in a
    cluster: by the chief only; the report of another worker names the chief's destination)."""
    cluster = join_cluster()  # before the model is loaded: joining renames the process's devices
    with open_source(checkpoint, options) as source:
        destination = source.check_output(options.output, options.overwrite)  # a bad -o fails before the pass
        measured = measure(source, data, options, cluster)
        written = source.write(measured.new_values, destination, options.overwrite) if cluster.chief else destination
    output_dir = destination if destination.is_dir() else destination.parent
    return RecalibrationReport(**measured.fields, output_checkpoint=str(written), output_dir=str(output_dir))


def diagnose(checkpoint, data, options: Options) -> DiagnosisReport:
    """Measure only: how far the stored statistics are from the recomputed ones; nothing is written."""
    cluster = join_cluster()
    with open_source(checkpoint, options) as source:
        return DiagnosisReport(**measure(source, data, options, cluster).fields)


def _summary(values: np.ndarray) -> tuple[float, float, float]:
    return float(values.min()), float(values.mean()), float(values.max())


def inspect(checkpoint, options: Options) -> InspectionReport:
    """Every BN layer with its stored statistics and flags, no data needed.

    Flags: ``initial`` when every moving mean is exactly 0 and every moving variance exactly 1 (the update ops
    never ran); ``same-as-against`` when both tensors equal, byte for byte, those of ``options.against`` (e.g.
    the pretrained checkpoint the fine-tuning started from).
    """
    with open_source(checkpoint, options) as source, contextlib.ExitStack() as stack:
        notice = Notices(options.on_notice)
        for message in source.notices:
            notice(message)
        other = None if options.against is None else stack.enter_context(source.stored_values(options.against))
        inspected = []
        for layer in source.layers:
            flags = []
            if np.all(layer.stored_mean == 0) and np.all(layer.stored_variance == 1):
                flags.append("initial")
            if other is not None:
                mean, variance = other(layer.mean_key), other(layer.variance_key)
                if mean is not None and variance is not None and \
                        np.array_equal(mean.astype(np.float64).reshape(-1), layer.stored_mean) and \
                        np.array_equal(variance.astype(np.float64).reshape(-1), layer.stored_variance) and \
                        str(mean.dtype) == layer.dtype:
                    flags.append("same-as-against")
            inspected.append(InspectedLayer(
                name=layer.name, kind=layer.kind, channels=layer.channels, dtype=layer.dtype,
                mean_key=layer.mean_key, variance_key=layer.variance_key,
                mean_summary=_summary(layer.stored_mean), variance_summary=_summary(layer.stored_variance),
                flags=flags,
            ))
        against = None if options.against is None else str(options.against)
        return InspectionReport(source.label, source.graph_label, against, inspected, model_format=source.model_format,
                                cause=source.cause(), notices=notice.messages)
