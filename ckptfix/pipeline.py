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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ckptfix.data import DataKeys, open_calibration_data
from ckptfix.data.batching import Reservoir, Variety, samples_in
from ckptfix.data.conventions import choose as choose_preprocessing
from ckptfix.data.python import check_bounded
from ckptfix.data.spec import FixedBatch, ghost_batch_error
from ckptfix.diagnostics import agreement as output_agreement
from ckptfix.diagnostics import gate as repair_gate
from ckptfix.diagnostics.drift import DEFAULT_EPSILON
from ckptfix.diagnostics.evidence import staleness_evidence
from ckptfix.diagnostics.mismatch import first_layer_mismatch
from ckptfix.errors import CkptfixError, DataError, ForeignOutputError, NoBatchNormError, RepairRefused
from ckptfix.interrupts import commit_scope, interrupts_between_steps
from ckptfix.io.outputs import Place, check_run_paths, staged_files
from ckptfix.log import Notices, Progress
from ckptfix.options import Options, flag
from ckptfix.report import (CheckReport, DeviceReport, DiagnosisReport, InspectedLayer, InspectionReport, LayerReport,
                            RecalibrationReport)
from ckptfix.scaling import Cluster, DevicePool, join_cluster, resolve_devices
from ckptfix.sources import open_source
from ckptfix.sources.base import Layer, Session, Source
from ckptfix.stats import Checks, Estimator, PooledMoments, UntilStable, one_batch_standard_errors


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


def _layer_report(layer: Layer, pooled: PooledMoments, estimator: Estimator, samples: int) -> LayerReport:
    """The layer's new statistics in its own variance convention, next to the stored ones, with their standard
    errors (from one batch of ``samples`` samples: :func:`ckptfix.stats.one_batch_standard_errors`)."""
    mean, variance = pooled.mean_and_variance(estimator, bessel=layer.bessel)
    if not (np.isfinite(mean).all() and np.isfinite(variance).all()):  # never write non-finite statistics
        raise DataError(f"BN layer {layer.name}: the pooled statistics are not finite (overflow?): nothing was written.")
    epsilon = DEFAULT_EPSILON if layer.epsilon is None else layer.epsilon
    mean_errors, variance_errors = pooled.standard_errors(epsilon)
    if pooled.num_batches == 1:
        mean_errors, variance_errors = one_batch_standard_errors(pooled.m2 / max(pooled.count, 1), epsilon, samples)
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
        frozen=layer.frozen,
        mean_standard_errors=mean_errors,
        variance_relative_errors=variance_errors,
    )


@dataclass
class _Stream:
    """What one pass over the calibration data gathered."""

    pooled: dict[str, PooledMoments]
    kept: Reservoir  # samples drawn from the whole stream, for the agreement check
    num_samples: int = 0
    num_batches: int = 0
    devices: dict[str, DeviceReport] = field(default_factory=dict)  # what each device of this worker took
    variety: Variety = field(default_factory=Variety)
    stable: bool = False  # stopped by --until-stable


def _stream(pool: DevicePool, batches, layers: list[Layer], keep: Reservoir, progress: bool, cluster: Cluster,
            until: UntilStable | None = None) -> _Stream:
    """Run every batch of ``batches`` (this worker's share) once, on the pool's devices; pool each layer's
    moments in batch order; offer each batch to ``keep``. With ``until``, stop at the first check
    (:class:`ckptfix.stats.stopping.Checks`: after rounds of a batch per worker) at which every layer's
    statistics, merged over the cluster, are stable."""
    seen = _Stream({layer.name: PooledMoments(layer.channels) for layer in layers}, keep,
                   devices={device: DeviceReport(device, cluster.rank) for device, _ in pool.sessions})
    checks = None if until is None else Checks(cluster.size)

    def share():
        for batch in batches:
            last = getattr(batches, "last", None)  # names this batch in errors, whenever they are raised
            check_ghost_batch(layers, samples_in(batch))  # a stream of unknown length: its last batch
            yield batch, False, batches.describe_last if last is None else last.describe

    with interrupts_between_steps() as check_interrupt, \
            Progress(batches.num_samples if cluster.size == 1 else None, display=progress) as bar:
        for ran in pool.run(share()):
            check_interrupt()  # Ctrl-C between batches: inside a TensorFlow call it can be lost
            for name, calls in ran.moments.items():
                for moment in calls:
                    check_batch_moments(name, moment, ran.describe)
                    seen.pooled[name].add(moment)
            seen.kept.offer(ran.batch)
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


#: the batch size of the agreement check's training-mode reference when the input does not fix one (at
#: least the run's): BN on 32 samples' statistics is close to BN on the population's, as training's was
REFERENCE_BATCH = 32


def _agreement(session: Session, stream: _Stream, reports: list[LayerReport], size: int, seed: int, ghost: bool = False):
    """The agreement check (:mod:`ckptfix.diagnostics.agreement`) on the samples kept from the whole stream,
    shuffled together into new batches (a stream ordered by class would otherwise give one-class batches, whose
    batch statistics are not training's): their outputs with BN on batch statistics (the reference), then in
    inference mode with the stored, the new and the new statistics moved within their standard errors (one
    draw, seeded; not with one batch, whose standard errors are unknown). With ``ghost`` BN layers the reference
    batches are of the run's size too, a multiple of each group size (:func:`check_ghost_batches`), so that each
    group of V samples is normalised by its own moments, as in training."""
    fixed = session.fixed_batch is not None or ghost  # batches of exactly ``size``: the model's own ops, ghost groups
    mixed = stream.kept.mixed(size if fixed else max(size, REFERENCE_BATCH), exact=fixed, seed=seed)
    join = output_agreement.concatenate
    reference = join([session.moments(batch, keep_output=True)[1] for batch in mixed])
    before = join([session.inference_outputs(batch) for batch in mixed])
    session.assign_statistics({r.name: (r.new_mean, r.new_variance) for r in reports})
    after = join([session.inference_outputs(batch) for batch in mixed])
    agreement = output_agreement.compare(session.output_name, reference, before, after)
    if not all(np.isfinite(r.mean_standard_error) and np.isfinite(r.variance_relative_error) for r in reports):
        return agreement
    rng = np.random.default_rng(seed)
    session.assign_statistics({r.name: output_agreement.perturbed_statistics(
        r.new_mean, r.new_variance, r.epsilon, r.mean_standard_errors, r.variance_relative_errors, rng) for r in reports})
    perturbed = join([session.inference_outputs(batch) for batch in mixed])
    return output_agreement.with_stability(agreement, after, perturbed)


@dataclass
class Measurement:
    """A measuring pass's results: the report fields, the new values by checkpoint key, and the evidence that
    drifted statistics are stale (:mod:`ckptfix.diagnostics.evidence`)."""

    fields: dict
    new_values: dict[str, np.ndarray]
    evidence: list[str]
    notice: Notices  # the run's notices: kept for the report, logged and passed on


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


def check_ghost_batches(layers: Sequence[Layer], size: int, num_samples: int | None) -> None:
    """Ghost BN (``virtual_batch_size=V``) normalises groups of V samples: every batch must split into them, as in
    training (its reshape fails otherwise). Refused before any work: a batch size, or a known number of samples
    (the last batch), that is not a multiple of V."""
    for layer in layers:
        virtual = layer.virtual_batch_size
        if virtual and size % virtual:
            raise ghost_batch_error(layer.name, virtual, f"batches of {size} samples",
                                    f"pass a --batch-size that is a multiple of {virtual} (the training batch size)")
        if virtual and num_samples is not None and num_samples % virtual:
            whole = num_samples - num_samples % virtual
            raise ghost_batch_error(layer.name, virtual, f"{num_samples} samples (the last batch)",
                                    f"pass --num-samples {whole}" if whole else f"pass at least {virtual} samples")


def check_ghost_batch(layers: Sequence[Layer], rows: int) -> None:
    """One batch, before it runs: :func:`check_ghost_batches` for data whose number of samples was not known."""
    for layer in layers:
        if layer.virtual_batch_size and rows % layer.virtual_batch_size:
            raise ghost_batch_error(layer.name, layer.virtual_batch_size, f"the {rows} samples of a batch")


def _same_as(other, layer: Layer) -> bool:
    """Whether another file's (``--against``) statistics for ``layer`` equal the stored ones, byte for byte."""
    mean, variance = other(layer.mean_key), other(layer.variance_key)
    return (mean is not None and variance is not None
            and np.array_equal(mean.astype(np.float64).reshape(-1), layer.stored_mean)
            and np.array_equal(variance.astype(np.float64).reshape(-1), layer.stored_variance)
            and str(mean.dtype) == layer.dtype)


def _initial(layer: Layer) -> bool:
    return bool(np.all(layer.stored_mean == 0) and np.all(layer.stored_variance == 1))


def _evidence(layers: Sequence[Layer], reports: Sequence[LayerReport], agreement, cause, other,
              frozen: Sequence[str], adapt: bool) -> list[str]:
    """:func:`ckptfix.diagnostics.evidence.staleness_evidence`: the history of the layers that drift beyond the
    noise of the data (initial values, ``--against``'s, a cause in the graph: none drift, none needed), and what
    a repair would change at the outputs. None when the layers were frozen while training (their stored
    statistics are what the weights were trained against; ``adapt`` asks to recompute them, not to call them
    stale)."""
    if frozen:
        return []
    drifted = {report.name for report in reports if report.drift.stale and not report.within_noise}
    chosen = [layer for layer in layers if layer.name in drifted]
    return staleness_evidence([layer.name for layer in chosen if _initial(layer)],
                              [layer.name for layer in chosen if other is not None and _same_as(other, layer)],
                              cause if chosen else None, agreement)


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
    layers, frozen = _unfrozen(select_layers(source.layers, options.include, options.exclude), options.adapt, notice)
    named = DataKeys(data, options.data_format)
    with contextlib.ExitStack() as stack:
        pool = _sessions(stack, source, layers, named.keys, options, notice)
        session = pool.sessions[0][1]
        size = batch_size(options, session, notice)
        preprocessing = choose_preprocessing(options.preprocess, source.convention, session.input_specs)
        batches = open_calibration_data(
            named.data,
            inputs=session.input_specs,
            batch_size=size,
            num_samples=options.num_samples,
            shuffle=options.shuffle,
            seed=options.seed,
            share=(cluster.rank, cluster.size),
            preprocess=preprocessing.preprocess,
            on_warning=notice,
            **options.data_options,
        )
        check_whole_batches(session.fixed_batch, batches.num_samples if cluster.size == 1 else None, notice)
        check_ghost_batches(layers, size, batches.num_samples if cluster.size == 1 else None)
        if batches.images:
            notice(preprocessing.describe(batches.preprocessing, batches.integer_images))
        keep = options.agreement_samples if session.output_name and cluster.chief else 0
        until = _until_stable(options, layers, batches, notice)
        kept = Reservoir(max(keep, size) if keep else 0, options.seed)  # at least one batch: a fixed batch dimension
        stream = _stream(pool, batches, layers, kept, options.progress, cluster, until)
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
        reports = [_layer_report(layer, pooled[layer.name], options.estimator, num_samples) for layer in layers]
        ghosts = [layer.name for layer in layers if layer.virtual_batch_size]
        if ghosts:
            notice(f"ghost batch norm (virtual_batch_size) in {', '.join(ghosts)}: measured group by group as training "
                   "normalises them; written: "
                   + ("the mean over the groups of their moments, what the layer's update holds"
                      if Estimator(options.estimator) == Estimator.BATCH_MEAN else
                      "the statistics of every sample (--estimator batch-mean: the mean over the groups of their "
                      "moments, what the layer's update holds)"))
        cause = source.cause()
        first = next((r for r in reports if r.name == source.layers[0].name), None)
        variety = stream.variety  # degenerate data says nothing of the preprocessing: the gate names it instead
        degenerate = variety.identical or variety.near_identical or variety.flat
        mismatch = first and not degenerate and first_layer_mismatch(
            first, preprocessing.preset if batches.images else None, explained=bool(cause and cause.found))
        if mismatch and not batches.images:  # arrays are preprocessed by their owner: a domain shift looks the same
            notice.warn(mismatch.message)
        agreement = None
        if stream.kept.count:
            if session.inference_unavailable:
                notice(f"no output agreement: {session.inference_unavailable} (training mode is baked into the graph)")
            else:
                agreement = _agreement(session, stream, reports, size, options.seed,
                                       ghost=any(layer.virtual_batch_size for layer in layers))
        num_batches = sum(device.batches for device in devices)
        gate = repair_gate.check(reports, num_samples=num_samples, batch_size=size, variety=stream.variety,
                                 agreement=agreement, frozen=frozen, adapt=options.adapt,
                                 mismatch=mismatch.message if mismatch and batches.images else None)
        for warning in gate.warnings:
            notice.warn(warning)
        stopped = _stop_reason(options, stream, num_samples)
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
        evidence = _evidence(layers, reports, agreement, cause, other, frozen, options.adapt)
    new_values = {key: value for r in reports for key, value in ((r.mean_key, r.new_mean), (r.variance_key, r.new_variance))}
    return Measurement(fields, new_values, evidence, notice)


def _unfrozen(chosen: list[Layer], adapt: bool, notice) -> tuple[list[Layer], list[str]]:
    """The layers to measure and those of them that were frozen while training (:attr:`Layer.frozen`).

    Frozen layers are left as stored (they stay in inference mode in the measuring pass too, as in training)
    unless ``adapt``; when every chosen layer is frozen they are measured all the same, for the diagnosis, and
    the repair gate refuses to write them without ``adapt``."""
    frozen = [layer.name for layer in chosen if layer.frozen]
    if not frozen or adapt:
        return chosen, frozen
    if len(frozen) == len(chosen):
        notice(f"every chosen BN layer ({len(frozen)}) was frozen while training (trainable=False): its stored "
               f"statistics are what the weights were trained against")
        return chosen, frozen
    notice(f"{len(frozen)} BN layer(s) frozen while training (trainable=False) left as stored: "
           f"{', '.join(frozen[:3])}{' ...' if len(frozen) > 3 else ''} (--adapt recomputes them too)")
    return [layer for layer in chosen if not layer.frozen], []


def _until_stable(options: Options, layers: Sequence[Layer], batches, notice) -> UntilStable | None:
    """The ``--until-stable`` rule for ``layers`` (None without the option, or when ``batches`` are not in a
    random order and end: a first part of an ordered stream, e.g. sorted by class, need not represent the rest,
    whatever its standard errors say, so such data is read to its end)."""
    if options.until_stable is None:
        return None
    if not batches.random_order and (batches.finite or options.num_samples is not None):
        notice(f"--until-stable reads all the data: {batches.source} is not read in a random order (a first part "
               "of it need not represent the rest)")
        return None
    if not batches.random_order:
        notice(f"--until-stable on {batches.source}, read in the order given: its first part is taken to represent "
               "the rest (shuffle it if it is ordered, e.g. by class)")
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
    check_run_paths(None if destination is None else Place(destination, "-o/--output"), sides, inputs, options.overwrite)


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
    check_bounded(data, options.num_samples, options.until_stable is not None)
    cluster = join_cluster(options.cluster_timeout)  # before the model is loaded: joining renames the devices
    with open_source(checkpoint, options) as source:
        try:
            destination = source.check_output(options.output, options.overwrite)  # a bad -o fails before the pass
        except ForeignOutputError:  # an -o holding the calibration data (an input): that reason first
            if options.output is not None:
                _run_paths(source, data, options, Path(options.output))
            raise
        _run_paths(source, data, options, destination)
        measured = measure(source, data, options, cluster)
        gate = measured.fields["gate"]
        output_dir = destination.parent if source.writes_file else destination
        if not gate.passed and not options.force:
            report = RecalibrationReport(**measured.fields, output_checkpoint="", output_dir="")
            raise RepairRefused(_refusal(gate, "recalibrate"), report)
        if not gate.passed:
            measured.notice.warn("written despite the repair gate (--force): " + "; ".join(gate.reasons))
        if not cluster.chief:
            return RecalibrationReport(**measured.fields, output_checkpoint=str(destination), output_dir=str(output_dir))
        report = RecalibrationReport(**measured.fields, output_checkpoint=str(source.written_path(destination)),
                                     output_dir=str(output_dir))
        with commit_scope(), staged_files(_side_outputs(report, options), options.overwrite):
            source.write(measured.new_values, destination, options.overwrite)
    return report


def diagnose(checkpoint, data, options: Options) -> DiagnosisReport:
    """Measure only: how far the stored statistics are from the recomputed ones, and whether that is stale
    (``report.verdict``); nothing is written but the side outputs asked for. A gate refusal is the
    ``inconclusive`` verdict."""
    check_bounded(data, options.num_samples, options.until_stable is not None)
    cluster = join_cluster(options.cluster_timeout)
    with open_source(checkpoint, options) as source, contextlib.ExitStack() as stack:
        _run_paths(source, data, options, None)
        other = None if options.against is None else stack.enter_context(source.stored_values(options.against))
        measured = measure(source, data, options, cluster, other)
        report = DiagnosisReport(**measured.fields, evidence=measured.evidence)
        if cluster.chief:
            with staged_files(_side_outputs(report, options), options.overwrite):
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


_CHECK_FIX = "pass the .meta that tf.compat.v1.train.export_meta_graph() or a training checkpoint wrote"


def check(graph) -> CheckReport:
    """Whether the training graph ``graph`` (a ``.meta`` file, or a checkpoint prefix / folder whose ``.meta`` it
    reads) runs its BN update ops in its train op: :func:`~ckptfix.diagnostics.cause.find_cause`, the proof
    ``inspect`` gives. Needs no checkpoint (a ``.meta`` exported before the first step will do)."""
    from ckptfix.diagnostics.cause import find_cause
    from ckptfix.errors import CheckpointError
    from ckptfix.graph.batchnorm import find_batchnorm_layers
    from ckptfix.graph.index import GraphIndex
    from ckptfix.graph.meta import load_meta_graph
    from ckptfix.io.locate import locate_checkpoint, prefix_named_by

    path = Path(graph).expanduser()
    if path.is_dir():
        path = locate_checkpoint(path).meta
    elif not path.is_file():
        meta = prefix_named_by(path).file(".meta")
        if not meta.is_file():
            raise CheckpointError(f"no .meta graph at {graph}: {_CHECK_FIX}.")
        path = meta
    meta_graph = load_meta_graph(path, _CHECK_FIX)
    index = GraphIndex(meta_graph.graph_def)
    layers = find_batchnorm_layers(index)
    if not layers:
        raise NoBatchNormError(f"no BatchNorm layers in {path.name}: nothing to check.")
    return CheckReport(str(path), [layer.name for layer in layers], find_cause(meta_graph, index))
