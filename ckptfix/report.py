"""Typed results of ckptfix's commands, and their terminal and JSON forms.

The API returns these objects; the CLI only prints them. ``to_dict()`` is the ``--json`` / ``--report``
form, versioned by :data:`SCHEMA_VERSION` (documented in docs/diagnostics.md). Arrays are per-channel values
as stored before and as computed (float64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckptfix.diagnostics.agreement import Agreement
from ckptfix.diagnostics.cause import Cause
from ckptfix.diagnostics.drift import DEFAULT_EPSILON, LayerDrift, layer_drift
from ckptfix.diagnostics.gate import Gate

SCHEMA_VERSION = 1
DEFAULT_ROWS = 15
#: a drift within this many standard errors of the data given is reported as noise, not as stale or different
NOISE_SIGMAS = 3.0
_BAR_WIDTH = 20
_BAR_FULL_SCALE = 4.0  # a drift score of 4 (four times the stale threshold) fills the bar


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def drift_bar(score: float) -> str:
    """A text bar of the drift score: ``#`` per 0.2 of score up to 4, ``|`` marking the stale threshold (1)."""
    filled = int(round(min(score, _BAR_FULL_SCALE) / _BAR_FULL_SCALE * _BAR_WIDTH))
    cells = ["#" if k < filled else "." for k in range(_BAR_WIDTH)]
    cells.insert(int(_BAR_WIDTH / _BAR_FULL_SCALE), "|")
    return "".join(cells) + ("+" if score > _BAR_FULL_SCALE else "")


def _truncate(rows: list, show_all: bool, what: str) -> tuple[list, str]:
    if show_all or len(rows) <= DEFAULT_ROWS:
        return rows, ""
    return rows[:DEFAULT_ROWS], f"... and {len(rows) - DEFAULT_ROWS} more {what} (--all shows every one)"


def _finite_or_none(value: float) -> float | None:
    """JSON has no inf/nan: an undefined figure is null."""
    return float(value) if np.isfinite(value) else None


def _with_model_format(model_format: str | None, content: dict) -> dict:
    return content if model_format is None else {**content, "model_format": model_format}


@dataclass(frozen=True)
class LayerReport:
    """One BN layer: where its statistics live and how they compare with freshly computed ones.

    ``variance_convention`` is ``"bessel"`` (``M2 / (n - 1)``, fused TF1 BN) or ``"biased"`` (``M2 / n``,
    non-fused BN). ``count`` is the number of values pooled per channel (samples x spatial positions).
    ``epsilon`` is the layer's BN epsilon, the scale ``sqrt(var + epsilon)`` drift is measured on.
    """

    name: str
    kind: str
    channels: int
    mean_key: str
    variance_key: str
    variance_convention: str
    count: int
    old_mean: np.ndarray
    new_mean: np.ndarray
    old_variance: np.ndarray
    new_variance: np.ndarray
    epsilon: float = DEFAULT_EPSILON
    #: per channel: the standard error of the new mean in units of sqrt(var + eps), and the relative standard
    #: error of var + eps, from the variation between batches (:meth:`ckptfix.stats.PooledMoments.standard_errors`;
    #: inf with one batch; None when not measured)
    mean_standard_errors: np.ndarray | None = None
    variance_relative_errors: np.ndarray | None = None
    #: the layer was frozen while training (:attr:`ckptfix.sources.base.Layer.frozen`)
    frozen: bool = False

    @property
    def mean_standard_error(self) -> float:
        """The worst channel's standard error of the new mean (units of sqrt(var + eps))."""
        return float("nan") if self.mean_standard_errors is None else float(np.max(self.mean_standard_errors))

    @property
    def variance_relative_error(self) -> float:
        """The worst channel's relative standard error of var + eps."""
        return float("nan") if self.variance_relative_errors is None else float(np.max(self.variance_relative_errors))

    @property
    def within_noise(self) -> bool:
        """Whether the drift could be estimation noise of the data given: RMS mean shift at most
        ``NOISE_SIGMAS`` x the RMS standard error of the mean, and RMS log variance ratio at most ``NOISE_SIGMAS`` x
        the RMS relative standard error of the variance (``ln`` of a ratio ~ its relative error)."""
        if self.mean_standard_errors is None:
            return False
        rms = lambda v: float(np.sqrt(np.mean(np.square(v))))  # noqa: E731
        drift = self.drift
        return (drift.mean_shift <= NOISE_SIGMAS * rms(self.mean_standard_errors)
                and drift.log_variance_ratio <= NOISE_SIGMAS * rms(self.variance_relative_errors))

    def uncertainty_cell(self) -> str:
        """``±0.012σ/3.1%``: the worst channel's standard errors of mean and variance, for the tables."""
        if not np.isfinite(self.mean_standard_error):
            return "n/a (1 batch)" if self.mean_standard_errors is not None else ""
        return f"±{self.mean_standard_error:.2g}σ/{self.variance_relative_error:.1%}"

    @property
    def mean_change(self) -> float:
        """Relative change of the mean vector: ``||new - old|| / max(||new||, ||new_std||)``."""
        scale = max(np.linalg.norm(self.new_mean), np.linalg.norm(np.sqrt(self.new_variance)), 1e-12)
        return float(np.linalg.norm(self.new_mean - self.old_mean) / scale)

    @property
    def variance_change(self) -> float:
        """Relative change of the variance vector: ``||new - old|| / ||new||``."""
        scale = max(float(np.linalg.norm(self.new_variance)), 1e-12)
        return float(np.linalg.norm(self.new_variance - self.old_variance) / scale)

    @property
    def drift(self) -> LayerDrift:
        """How stale the stored statistics were (see :mod:`ckptfix.diagnostics.drift`)."""
        return layer_drift(self.old_mean, self.old_variance, self.new_mean, self.new_variance, epsilon=self.epsilon)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "channels": self.channels,
            "mean_key": self.mean_key,
            "variance_key": self.variance_key,
            "variance_convention": self.variance_convention,
            "count": self.count,
            "epsilon": self.epsilon,
            "frozen": self.frozen,
            "mean_change": self.mean_change,
            "variance_change": self.variance_change,
            "drift": self.drift.to_dict(),
            "uncertainty": {"mean_standard_error": _finite_or_none(self.mean_standard_error),
                            "variance_relative_error": _finite_or_none(self.variance_relative_error),
                            "within_noise": self.within_noise},
            "old_mean": self.old_mean.tolist(),
            "new_mean": self.new_mean.tolist(),
            "old_variance": self.old_variance.tolist(),
            "new_variance": self.new_variance.tolist(),
        }


@dataclass
class DeviceReport:
    """What one device took: ``samples`` and ``batches`` run on ``device`` (``/GPU:0``) of worker ``worker``
    (the rank in a TF_CONFIG cluster, chief 0; 0 for a one-process run)."""

    device: str
    worker: int = 0
    samples: int = 0
    batches: int = 0

    def to_dict(self) -> dict:
        return {"device": self.device, "worker": self.worker, "samples": self.samples, "batches": self.batches}


@dataclass(frozen=True)
class _Measured:
    """What recalibrate and diagnose share: the data used, the layers measured, the output agreement."""

    checkpoint: str
    num_samples: int
    num_batches: int
    estimator: str
    input_tensor: str  # several inputs: their names joined by commas (the --input form)
    training_flag: str | None
    layers: list[LayerReport]
    input_tensors: list[str] = field(default_factory=list)  # every fed input tensor, in feed order
    untouched_layers: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    agreement: Agreement | None = None
    #: where the calibration samples came from, and the files (or records) skipped as unreadable
    data_source: str = ""
    samples_skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)
    #: the Keras / TF2 file format (docs/keras.md); None for TF1 checkpoints, and then left out of to_dict()
    model_format: str | None = None
    #: why the statistics went stale, read from the training graph (None: no training graph to read)
    cause: Cause | None = None
    #: the devices (of every worker) that ran batches, and this process's rank among ``num_workers``
    #: (docs/scaling-out.md); the chief (0) writes and reports
    devices: list[DeviceReport] = field(default_factory=list)
    worker: int = 0
    num_workers: int = 1
    #: the repair gate's findings (:mod:`ckptfix.diagnostics.gate`): reasons it refuses for, warnings
    gate: Gate | None = None
    #: why the pass ended: "data" (all of it read), "num-samples" (--num-samples), "stable" (--until-stable)
    stop_reason: str = "data"

    def stop_summary(self) -> str:
        """How much data was used and why the pass ended, in one line."""
        why = {"stable": "every layer's standard errors fell below --until-stable",
               "num-samples": "--num-samples reached", "data": "all the data read"}[self.stop_reason]
        worst = max(self.layers, key=lambda layer: layer.mean_standard_error, default=None)
        precision = "" if worst is None or not np.isfinite(worst.mean_standard_error) else (
            f"; worst standard errors ±{worst.mean_standard_error:.2g}σ (mean, {worst.name}), "
            f"±{max(layer.variance_relative_error for layer in self.layers):.1%} (variance)")
        return f"{self.num_samples} samples in {self.num_batches} batches: {why}{precision}"

    def devices_summary(self) -> str | None:
        """One line on the devices and workers that ran, when there were several (else None)."""
        if len(self.devices) <= 1:
            return None
        each = ", ".join(f"{d.device}{f' (worker {d.worker})' if self.num_workers > 1 else ''}: {d.samples}"
                         for d in self.devices)
        workers = f" on {self.num_workers} workers" if self.num_workers > 1 else ""
        return f"{len(self.devices)} devices{workers} ran the batches (samples each: {each})"

    def _common_dict(self, kind: str) -> dict:
        return _with_model_format(self.model_format, {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "checkpoint": self.checkpoint,
            "num_samples": self.num_samples,
            "num_batches": self.num_batches,
            "estimator": self.estimator,
            "input_tensor": self.input_tensor,
            "input_tensors": list(self.input_tensors) or [self.input_tensor],
            "training_flag": self.training_flag,
            "layers": [layer.to_dict() for layer in self.layers],
            "untouched_layers": list(self.untouched_layers),
            "notices": list(self.notices),
            "agreement": None if self.agreement is None else self.agreement.to_dict(),
            "data_source": self.data_source,
            "samples_skipped": self.samples_skipped,
            "skipped_files": list(self.skipped_files),
            "cause": None if self.cause is None else self.cause.to_dict(),
            "devices": [device.to_dict() for device in self.devices],
            "gate": None if self.gate is None else self.gate.to_dict(),
            "stop_reason": self.stop_reason,
        })


@dataclass(frozen=True)
class RecalibrationReport(_Measured):
    """What :func:`ckptfix.recalibrate` did: the layers changed, the data used, where the output is."""

    output_checkpoint: str = ""
    output_dir: str = ""

    def to_dict(self) -> dict:
        return {**self._common_dict("recalibration"), "output_checkpoint": self.output_checkpoint,
                "output_dir": self.output_dir}

    def format_table(self, show_all: bool = True) -> str:
        """The per-layer table: old -> new mean/variance averages over channels, and how far the old statistics
        were from the new ones as ``diagnose`` measures it (:mod:`ckptfix.diagnostics.drift`, RMS over channels):
        the mean shift in units of sqrt(new var + eps), and |ln((old var + eps) / (new var + eps))|; and the worst
        channel's standard errors of the new statistics (:meth:`LayerReport.uncertainty_cell`)."""
        header = ("layer", "ch", "mean old -> new (avg)", "var old -> new (avg)", "mean shift", "log var ratio",
                  "± mean/var")
        rows = [
            (
                layer.name,
                str(layer.channels),
                f"{layer.old_mean.mean():+.4g} -> {layer.new_mean.mean():+.4g}",
                f"{layer.old_variance.mean():.4g} -> {layer.new_variance.mean():.4g}",
                f"{layer.drift.mean_shift:.3g}σ",
                f"{layer.drift.log_variance_ratio:.3g}",
                layer.uncertainty_cell(),
            )
            for layer in self.layers
        ]
        shown, more = _truncate(rows, show_all, "layers")
        return _table(header, shown) + (f"\n{more}" if more else "")


@dataclass(frozen=True)
class DiagnosisReport(_Measured):
    """What :func:`ckptfix.diagnose` measured: per-layer drift, output agreement, and the verdict.

    ``verdict``: ``inconclusive`` when the data cannot support a verdict (the repair gate's blockers: identical,
    near-identical or flat samples, batch size 1, collapsed channels); ``stale`` when ``evidence``
    shows a training bug or a broken inference mode (:mod:`ckptfix.diagnostics.evidence`: drifted layers with
    initial 0/1 statistics or ``--against``'s, a cause in the training graph, or a repair that would change
    much of what the model decides on this data, toward training mode); ``differs`` when layers drift past the
    thresholds of :mod:`ckptfix.diagnostics.drift`, beyond the noise of the data
    (:attr:`LayerReport.within_noise`), without such evidence: the stored statistics differ from this data (a
    domain shift looks the same, as do layers frozen while training) and recalibrating would adapt the model to
    it; ``fresh`` otherwise. Each layer's row says the same: ``stale`` / ``differs`` for its drift under that
    verdict, ``noise``, ``fresh``, or ``frozen``.
    """

    evidence: list[str] = field(default_factory=list)

    @property
    def stale_layers(self) -> list[str]:
        """The layers whose drift passes the thresholds and is not within the noise of the data (stale or
        differing, as the verdict says)."""
        return [layer.name for layer in self.layers if layer.drift.stale and not layer.within_noise]

    @property
    def noise_layers(self) -> list[str]:
        """Layers over the thresholds by no more than the noise of the data given (more data would tell)."""
        return [layer.name for layer in self.layers if layer.drift.stale and layer.within_noise]

    @property
    def verdict(self) -> str:
        if self.gate is not None and not self.gate.conclusive:
            return "inconclusive"
        if self.evidence:
            return "stale"
        return "differs" if self.stale_layers else "fresh"

    def layer_label(self, layer: LayerReport) -> str:
        """The layer's row label, in the overall verdict's words (see the class docstring)."""
        if layer.frozen:
            return "frozen"
        if self.verdict == "inconclusive":  # the data cannot judge any layer
            return "inconclusive"
        if not layer.drift.stale:
            return "fresh"
        if layer.within_noise:
            return "noise"
        return "stale" if self.verdict == "stale" else "differs"

    @property
    def stale(self) -> bool:
        return self.verdict == "stale"

    def to_dict(self) -> dict:
        return {**self._common_dict("diagnosis"), "verdict": self.verdict, "stale_layers": self.stale_layers,
                "noise_layers": self.noise_layers, "evidence": list(self.evidence),
                "layer_labels": {layer.name: self.layer_label(layer) for layer in self.layers}}

    def format_table(self, show_all: bool = False) -> str:
        """Layers stalest first: RMS mean shift (in new σ), RMS |log variance ratio|, worst channel, a drift bar."""
        header = ("layer", "ch", "mean shift", "log var ratio", "worst ch", "± mean/var", "verdict",
                  "drift (| = stale threshold)")
        ranked = sorted(self.layers, key=lambda layer: -layer.drift.score)
        rows = []
        for layer in ranked:
            drift = layer.drift
            rows.append((
                layer.name,
                str(layer.channels),
                f"{drift.mean_shift:.3g}σ",
                f"{drift.log_variance_ratio:.3g}",
                str(drift.worst_channel),
                layer.uncertainty_cell(),
                self.layer_label(layer),
                drift_bar(drift.score),
            ))
        shown, more = _truncate(rows, show_all, "layers")
        return _table(header, shown) + (f"\n{more}" if more else "")


@dataclass(frozen=True)
class InspectedLayer:
    """One BN layer as stored: keys, dtype, ``(min, mean, max)`` summaries, flags."""

    name: str
    kind: str
    channels: int
    dtype: str
    mean_key: str
    variance_key: str
    mean_summary: tuple[float, float, float]
    variance_summary: tuple[float, float, float]
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "channels": self.channels,
            "dtype": self.dtype,
            "mean_key": self.mean_key,
            "variance_key": self.variance_key,
            "mean": dict(zip(("min", "mean", "max"), self.mean_summary)),
            "variance": dict(zip(("min", "mean", "max"), self.variance_summary)),
            "flags": list(self.flags),
        }


@dataclass(frozen=True)
class InspectionReport:
    """Every BN layer of a checkpoint; ``flagged`` lists the layers whose statistics look never updated."""

    checkpoint: str
    meta: str
    against: str | None
    layers: list[InspectedLayer]
    model_format: str | None = None
    cause: Cause | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.flags]

    def to_dict(self) -> dict:
        return _with_model_format(self.model_format, {
            "schema_version": SCHEMA_VERSION,
            "kind": "inspection",
            "checkpoint": self.checkpoint,
            "meta": self.meta,
            "against": self.against,
            "flagged": self.flagged,
            "layers": [layer.to_dict() for layer in self.layers],
            "cause": None if self.cause is None else self.cause.to_dict(),
            "notices": list(self.notices),
        })

    def format_table(self, show_all: bool = False) -> str:
        """Layers with flags first, then in graph order."""
        header = ("layer", "kind", "ch", "dtype", "mean min/avg/max", "var min/avg/max", "flags")
        ordered = sorted(self.layers, key=lambda layer: not layer.flags)
        rows = [
            (
                layer.name,
                layer.kind,
                str(layer.channels),
                layer.dtype,
                "/".join(f"{v:.3g}" for v in layer.mean_summary),
                "/".join(f"{v:.3g}" for v in layer.variance_summary),
                ", ".join(layer.flags),
            )
            for layer in ordered
        ]
        shown, more = _truncate(rows, show_all, "layers")
        return _table(header, shown) + (f"\n{more}" if more else "")


@dataclass(frozen=True)
class CheckReport:
    """``ckptfix check``: does the training graph's train op run the BN update ops (``cause``, as ``inspect`` reads
    it)? ``verdict``: ``pass`` (it runs them all), ``fail`` (it never runs some and no other op runs both:
    ``cause.layers`` names their layers), ``unknown`` (no train op, no update op, or another op runs the train op
    and the missed updates together: the graph cannot tell which one training runs)."""

    graph: str
    layers: list[str]
    cause: Cause

    @property
    def verdict(self) -> str:
        from ckptfix.diagnostics.cause import UPDATE_OPS_RUN

        if self.cause.found:
            return "unknown" if self.cause.runners else "fail"
        return "pass" if self.cause.code == UPDATE_OPS_RUN else "unknown"

    def summary(self) -> str:
        """The verdict in a line or three (``fail``: the cause's message, the fix on its second line)."""
        if self.verdict == "pass":
            return (f"ok: the train op {self.cause.train_op} runs the update ops of all {len(self.layers)} BN layers "
                    f"of {Path(self.graph).name}.")
        if self.cause.runners and self.cause.found:  # the graph cannot tell which of the two training runs
            return (f"UNKNOWN: {self.cause.message}\nTo let the graph tell, register the op your loop runs: "
                    "`tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.TRAIN_OP, train_op)`.")
        message = self.cause.message
        return message if message.startswith("unknown") else f"{self.verdict.upper()}: {message}"

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "check",
            "graph": self.graph,
            "verdict": self.verdict,
            "layers": list(self.layers),
            "cause": self.cause.to_dict(),
        }
