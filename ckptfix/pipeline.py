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
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ckptfix.data import DataKeys, open_calibration_data
from ckptfix.data.batching import first_samples, samples_in
from ckptfix.data.spec import FixedBatch
from ckptfix.diagnostics import agreement as output_agreement
from ckptfix.diagnostics import gate as repair_gate
from ckptfix.diagnostics.drift import DEFAULT_EPSILON
from ckptfix.diagnostics.evidence import staleness_evidence
from ckptfix.errors import CkptfixError, DataError, NoBatchNormError, RepairRefused
from ckptfix.interrupts import commit_scope, interrupts_between_steps
from ckptfix.io.outputs import Place, check_run_paths, staged_files
from ckptfix.options import Options, flag
from ckptfix.report import (DeviceReport, DiagnosisReport, InspectedLayer, InspectionReport, LayerReport,
                            RecalibrationReport)
from ckptfix.scaling import Cluster, DevicePool, join_cluster, resolve_devices
from ckptfix.sources import open_source
from ckptfix.sources.base import Layer, Session, Source
from ckptfix.stats import Checks, Estimator, PooledMoments, UntilStable


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
    if layer.virtual_batch_size:  # each group is one entry of ``pooled``: their mean, what training's update estimates
        estimator = Estimator.BATCH_MEAN
    mean, variance = pooled.mean_and_variance(estimator, bessel=layer.bessel)
    if not (np.isfinite(mean).all() and np.isfinite(variance).all()):  # never write non-finite statistics
        raise DataError(f"BN layer {layer.name}: the pooled statistics are not finite (overflow?): nothing was written.")
    epsilon = DEFAULT_EPSILON if layer.epsilon is None else layer.epsilon
    mean_errors, variance_errors = pooled.standard_errors(epsilon)
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
        epsilon=epsilon,
        mean_standard_errors=mean_errors,
        variance_relative_errors=variance_errors,
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
    variety: _Variety = field(default_factory=lambda: _Variety())
    stable: bool = False  # stopped by --until-stable


class _Variety:
    """Whether the samples seen differ: the first sample is kept until one differs from it (then nothing is)."""

    def __init__(self) -> None:
        self.first = None
        self.varied = False

    def see(self, batch) -> None:
        if self.varied:
            return
        arrays = [np.asarray(v) for v in (batch.values() if isinstance(batch, dict) else [batch])]
        if self.first is None:
            self.first = [a[:1].copy() for a in arrays]
        self.varied = any(not np.array_equal(a, np.broadcast_to(f, a.shape)) for a, f in zip(arrays, self.first))
        if self.varied:
            self.first = None


def _stream(pool: DevicePool, batches, layers: list[Layer], keep: int, progress: bool, cluster: Cluster,
            until: UntilStable | None = None) -> _Stream:
    """Run every batch of ``batches`` (this worker's share) once, on the pool's devices; pool each layer's
    moments in batch order; keep the share's first ``keep`` samples and their outputs. With ``until``, stop
    at the first check (:class:`ckptfix.stats.stopping.Checks`: after rounds of a batch per worker) at which
    every layer's statistics, merged over the cluster, are stable."""
    seen = _Stream({layer.name: PooledMoments(layer.channels) for layer in layers},
                   devices={device: DeviceReport(device, cluster.rank) for device, _ in pool.sessions})
    checks = None if until is None else Checks(cluster.size)

    def share():
        submitted = 0
        for batch in batches:
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
            seen.variety.see(ran.batch)
            samples = samples_in(ran.batch)
            seen.num_samples += samples
            seen.num_batches += 1
            seen.devices[ran.device].samples += samples
            seen.devices[ran.device].batches += 1
            bar.update(samples)
            if checks is not None and checks.due(seen.num_batches) and _stable(until, cluster, seen, ended=False)[0]:
                seen.stable = True
                break
        else:  # this share ended; in a cluster it keeps joining the checks until the others stop too
            rounds = seen.num_batches
            while checks is not None and cluster.size > 1:
                check_interrupt()
                rounds += 1
                if checks.due(rounds):
                    seen.stable, ended = _stable(until, cluster, seen, ended=True)
                    if seen.stable or ended:
                        break
        check_interrupt()
    return seen


def _stable(until: UntilStable, cluster: Cluster, seen: _Stream, ended: bool) -> tuple[bool, bool]:
    """At a check (:class:`ckptfix.stats.stopping.Checks`): whether the statistics of every batch read so far, by
    every worker, meet ``until`` (the same answer on every worker), and whether every worker's share has ended."""
    progress = cluster.progress(seen.pooled, seen.num_batches, ended)
    return until.reached(progress.pooled, progress.num_batches), progress.ended


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
    """A measuring pass's results: the report fields, the new values by checkpoint key, and the evidence that
    drifted statistics are stale (:mod:`ckptfix.diagnostics.evidence`)."""

    fields: dict
    new_values: dict[str, np.ndarray]
    evidence: list[str]
    notice: Callable[[str], None]  # the run's Notices: kept for the report and passed on


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


#: the batch size when neither --batch-size nor the graph's input fixes one
DEFAULT_BATCH_SIZE = 32


def batch_size(options: Options, session: Session, notice) -> int:
    """``--batch-size``, else the fixed batch dimension of the graph's first input (a training graph fed by a
    queue or a fixed placeholder records the batch size it trained with), else :data:`DEFAULT_BATCH_SIZE`.

    A declared batch dimension is freed by the session; one the model's own operations need
    (``session.fixed_batch``) is the only batch size possible: another ``--batch-size``, or 1, is refused."""
    fixed = session.fixed_batch
    if fixed is not None:
        if fixed.size == 1:
            raise DataError(f"the model fixes the batch of its input {fixed.input} at 1 ({fixed.reason}), and batch "
                            "statistics need several samples: export it with a free batch dimension (None).")
        if options.batch_size not in (None, fixed.size):
            raise DataError(f"the model takes batches of exactly {fixed.size} samples at {fixed.input} "
                            f"({fixed.reason}): pass --batch-size {fixed.size}, or leave it out.")
        return fixed.size
    if options.batch_size is not None:
        return options.batch_size
    for spec in session.input_specs:
        fixed = None if not spec.shape else spec.shape[0]
        if fixed is not None and fixed > 1:
            notice(f"batch size {fixed}, the fixed batch dimension of the graph's input {spec.name} (as in training; "
                   "--batch-size sets another)")
            return int(fixed)
    return DEFAULT_BATCH_SIZE


def check_whole_batches(fixed: FixedBatch | None, num_samples: int | None, notice) -> None:
    """With a batch size the model needs, a known number of samples must fill whole batches: refused before any
    work otherwise (the last batch would fail, or be re-batched by the operation that fixes it)."""
    if fixed is None:
        return
    if num_samples is None or num_samples % fixed.size == 0:
        notice(f"batch size {fixed.size}: the model's input {fixed.input} takes exactly {fixed.size} samples "
               f"({fixed.reason})")
        return
    whole = num_samples - num_samples % fixed.size
    fix = f"pass --num-samples {whole}" if whole else f"pass at least {fixed.size} samples"
    raise DataError(f"the model takes batches of exactly {fixed.size} samples at {fixed.input} ({fixed.reason}), and "
                    f"{num_samples} samples are not a multiple of {fixed.size}: {fix}.")


def _same_as(other, layer: Layer) -> bool:
    """Whether another file's (``--against``) statistics for ``layer`` equal the stored ones, byte for byte."""
    mean, variance = other(layer.mean_key), other(layer.variance_key)
    return (mean is not None and variance is not None
            and np.array_equal(mean.astype(np.float64).reshape(-1), layer.stored_mean)
            and np.array_equal(variance.astype(np.float64).reshape(-1), layer.stored_variance)
            and str(mean.dtype) == layer.dtype)


def _initial(layer: Layer) -> bool:
    return bool(np.all(layer.stored_mean == 0) and np.all(layer.stored_variance == 1))


def _evidence(layers: Sequence[Layer], reports: Sequence[LayerReport], agreement, cause, other) -> list[str]:
    """:func:`ckptfix.diagnostics.evidence.staleness_evidence` for the layers that drift beyond the noise of the
    data (none drift: no evidence needed)."""
    drifted = {report.name for report in reports if report.drift.stale and not report.within_noise}
    if not drifted:
        return []
    chosen = [layer for layer in layers if layer.name in drifted]
    return staleness_evidence([layer.name for layer in chosen if _initial(layer)],
                              [layer.name for layer in chosen if other is not None and _same_as(other, layer)],
                              cause, agreement)


def measure(source: Source, data, options: Options, cluster: Cluster | None = None, other=None) -> Measurement:
    """One pass over the calibration data: new statistics per chosen layer, the output agreement (run by the
    chief of a cluster), the repair gate's findings and the evidence of staleness (``other``: a reader of
    ``--against``'s statistics)."""
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
        size = batch_size(options, session, notice)
        batches = open_calibration_data(
            named.data,
            inputs=session.input_specs,
            batch_size=size,
            num_samples=options.num_samples,
            shuffle=options.shuffle,
            seed=options.seed,
            share=(cluster.rank, cluster.size),
            preprocess=options.preprocess,
            on_warning=notice,
            **options.data_options,
        )
        check_whole_batches(session.fixed_batch, batches.num_samples if cluster.size == 1 else None, notice)
        if batches.images:
            preset = getattr(options.preprocess, "__qualname__", options.preprocess)
            what = "integer arrays taken as 0..255 images," if batches.integer_images else "images"
            given = " (--preprocess raw uses them as given)" if batches.integer_images and preset != "raw" else ""
            notice(f"{what} preprocessed with --preprocess {preset}: {batches.preprocessing}{given}")
        keep = options.agreement_samples if session.output_name and cluster.chief else 0
        until = _until_stable(options, layers)
        stream = _stream(pool, batches, layers, keep, options.progress, cluster, until)
        if batches.merged_last:
            notice("the last batch had {} samples, fewer than half a batch: merged into the one before ({} samples)"
                   .format(*batches.merged_last))
        mine = dict(devices=[share.to_dict() for share in stream.devices.values()], skipped=batches.skipped_files,
                    count=batches.samples_skipped)  # every worker's, in rank order, from the combine
        pooled, facts = cluster.combine(stream.pooled, mine)
        devices = [DeviceReport(**share) for fact in facts for share in fact["devices"]]
        num_samples = sum(device.samples for device in devices)
        if num_samples == 0:
            raise CkptfixError("the calibration data yielded no samples: pass a folder or array with at least one sample.")
        reports = [_layer_report(layer, pooled[layer.name], options.estimator) for layer in layers]
        ghosts = [layer.name for layer in layers if layer.virtual_batch_size]
        if ghosts:
            notice(f"ghost batch norm (virtual_batch_size) in {', '.join(ghosts)}: their statistics are the mean over "
                   "groups of that many samples of each group's moments, as the layer's own update computes them")
        mismatch = preprocessing_mismatch(source.layers[0], reports)
        if mismatch:
            notice(mismatch)
        agreement = None
        if stream.kept:
            if session.inference_unavailable:
                notice(f"no output agreement: {session.inference_unavailable} (training mode is baked into the graph)")
            else:
                agreement = _agreement(session, stream, reports)
        num_batches = sum(device.batches for device in devices)
        gate = repair_gate.check(reports, num_samples=num_samples, num_batches=num_batches, batch_size=size,
                                 samples_identical=not stream.variety.varied, agreement=agreement)
        for warning in gate.warnings:
            notice(warning)
        stopped = _stop_reason(options, stream, num_samples)
        cause = source.cause()
        fields = dict(
            checkpoint=source.label,
            num_samples=num_samples,
            num_batches=num_batches,
            estimator=Estimator(options.estimator).value,
            input_tensor=",".join(session.input_names),
            input_tensors=list(session.input_names),
            training_flag=session.training_flag,
            layers=reports,
            untouched_layers=[layer.name for layer in source.layers if layer not in layers],
            notices=notice.messages,
            agreement=agreement,
            data_source=batches.source,
            samples_skipped=sum(fact["count"] for fact in facts),
            skipped_files=[name for fact in facts for name in fact["skipped"]],
            model_format=source.model_format,
            cause=cause,
            devices=devices,
            worker=cluster.rank,
            num_workers=cluster.size,
            gate=gate,
            stop_reason=stopped,
        )
        evidence = _evidence(layers, reports, agreement, cause, other)
    new_values = {key: value for r in reports for key, value in ((r.mean_key, r.new_mean), (r.variance_key, r.new_variance))}
    return Measurement(fields, new_values, evidence, notice)


def _until_stable(options: Options, layers: Sequence[Layer]) -> UntilStable | None:
    """The ``--until-stable`` rule for ``layers`` (None without the option)."""
    if options.until_stable is None:
        return None
    return UntilStable(options.until_stable, {
        layer.name: DEFAULT_EPSILON if layer.epsilon is None else layer.epsilon for layer in layers})


def _stop_reason(options: Options, stream: _Stream, num_samples: int) -> str:
    """Why the pass ended: ``stable`` (--until-stable), ``num-samples`` (--num-samples reached) or ``data``."""
    if stream.stable:
        return "stable"
    if options.num_samples is not None and num_samples >= options.num_samples:
        return "num-samples"
    return "data"


def _run_paths(source: Source, data, options: Options, destination: Path | None) -> None:
    """Every output of the run against every input and each other, before any work (:mod:`ckptfix.io.outputs`)."""
    inputs = [Place(path, "the model's input") for path in source.inputs]
    if isinstance(data, (str, os.PathLike)):
        inputs.append(Place(Path(data), "the calibration data"))
    for name in ("meta", "architecture", "against"):
        if getattr(options, name, None) is not None:
            inputs.append(Place(getattr(options, name), flag(name)))
    sides = [Place(getattr(options, name), flag(name)) for name in ("report", "summary", "plot")
             if getattr(options, name) is not None]
    if options.plot is not None:
        from ckptfix.render.plot import image_format

        image_format(options.plot)
    check_run_paths(None if destination is None else Place(destination, "-o/--output"), sides, inputs)


def _side_outputs(report, options: Options) -> list[tuple[Path, bytes, str]]:
    """The side outputs asked for (JSON report, Markdown summary, picture): (path, content, what)."""
    content = report.to_dict()
    made = []
    if options.report is not None:
        made.append((options.report, (json.dumps(content, indent=2) + "\n").encode(), "report"))
    if options.summary is not None:
        from ckptfix.render.summary import markdown_summary

        made.append((options.summary, markdown_summary(content).encode(), "summary"))
    if options.plot is not None:
        from ckptfix.render.plot import image_format, plot_report

        made.append((options.plot, plot_report(content, image_format(options.plot)), "plot"))
    return made


def _refusal(gate, command: str) -> str:
    """The one message of a gate refusal: the first reasons, and what to do."""
    more = f" (and {len(gate.reasons) - 1} more reason(s))" if len(gate.reasons) > 1 else ""
    if command == "recalibrate":
        return (f"repair refused, nothing was written: {gate.reasons[0]}{more}. "
                "Pass --force to write these statistics anyway.")
    return f"no verdict: {gate.reasons[0]}{more}."


def recalibrate(checkpoint, data, options: Options) -> RecalibrationReport:
    """Measure, then write a copy of CKPT with only the chosen layers' moving statistics replaced (in a
    cluster: by the chief only; the report of another worker names the chief's destination).

    The repair gate (:mod:`ckptfix.diagnostics.gate`) refuses to write (:class:`RepairRefused`, carrying the
    report) unless ``options.force``. Side outputs are staged before the model is written and renamed into
    place after it. The commit point is the swap of the repaired model into place (:mod:`ckptfix.io.atomic`):
    before it, Ctrl-C leaves nothing written; after it, Ctrl-C is ignored until the call returns
    (:func:`ckptfix.interrupts.commit_scope`).
    """
    cluster = join_cluster(options.cluster_timeout)  # before the model is loaded: joining renames the devices
    with open_source(checkpoint, options) as source:
        destination = source.check_output(options.output, options.overwrite)  # a bad -o fails before the pass
        _run_paths(source, data, options, destination)
        measured = measure(source, data, options, cluster)
        gate = measured.fields["gate"]
        output_dir = destination.parent if source.writes_file else destination
        if not gate.passed and not options.force:
            report = RecalibrationReport(**measured.fields, output_checkpoint="", output_dir="")
            raise RepairRefused(_refusal(gate, "recalibrate"), report)
        if not gate.passed:
            measured.notice("written despite the repair gate (--force): " + "; ".join(gate.reasons))
        if not cluster.chief:
            return RecalibrationReport(**measured.fields, output_checkpoint=str(destination), output_dir=str(output_dir))
        report = RecalibrationReport(**measured.fields, output_checkpoint=str(source.written_path(destination)),
                                     output_dir=str(output_dir))
        with commit_scope(), staged_files(_side_outputs(report, options)):
            source.write(measured.new_values, destination, options.overwrite)
    return report


def diagnose(checkpoint, data, options: Options) -> DiagnosisReport:
    """Measure only: how far the stored statistics are from the recomputed ones, and whether that is stale
    (``report.verdict``); nothing is written but the side outputs asked for. A gate refusal is the
    ``inconclusive`` verdict."""
    cluster = join_cluster(options.cluster_timeout)
    with open_source(checkpoint, options) as source, contextlib.ExitStack() as stack:
        _run_paths(source, data, options, None)
        other = None if options.against is None else stack.enter_context(source.stored_values(options.against))
        measured = measure(source, data, options, cluster, other)
        report = DiagnosisReport(**measured.fields, evidence=measured.evidence)
        if cluster.chief:
            with staged_files(_side_outputs(report, options)):
                pass
        return report


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
            if _initial(layer):
                flags.append("initial")
            if other is not None and _same_as(other, layer):
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
