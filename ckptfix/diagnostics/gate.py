"""The repair gate: new statistics are written only when the run's own evidence supports them.

``recalibrate`` refuses to write (:class:`~ckptfix.errors.RepairRefused`, exit 5) unless ``--force``, and
``diagnose`` gives no verdict (``inconclusive``, exit 5), when any of these holds (``diagnose`` still gives one
when the findings are only standard errors over the limits -- it then judges each layer's drift against them
-- or a contradicted repair, which says nothing of the stored statistics):

* **the proof contradicts the repair** (the agreement check on the first samples): top-1 agreement of
  inference mode with training mode is lower with the new statistics than with the stored ones beyond the
  noise of the sample count -- of the samples whose top-1 changed, ``lost`` now disagree and ``gained`` now
  agree; refused when ``lost - gained > max(2, 2 * sqrt(lost + gained))`` (a paired sign test at about two
  standard deviations) -- or the relative output error grows: ``after > 1.25 * before + 0.01``;
* **the data is degenerate**: every calibration sample is identical (one sample included), the batch size
  is 1 (BN on one sample's statistics is instance normalisation, not what training computed), or a layer
  has channels whose variance collapses: ``new var < 1e-4 * stored var`` where the stored variance exceeds
  the layer's epsilon (blank or constant inputs; not checked against the initial 0 / 1 statistics, where a
  real model's dead channels would look collapsed);
* **the data looks preprocessed unlike the training data** (:mod:`ckptfix.diagnostics.mismatch`: the
  first BN layer's stored statistics are far from the new ones, in mean or in variance);
* **the data is too thin**: fewer than :data:`MIN_BATCHES` batches (the uncertainty cannot be estimated), or
  a layer's worst-channel standard error of the mean above :data:`MAX_MEAN_STANDARD_ERROR` (in units of
  ``sqrt(var + eps)``) or relative standard error of ``var + eps`` above :data:`MAX_VARIANCE_RELATIVE_ERROR`
  (the between-batch estimates of :meth:`ckptfix.stats.PooledMoments.standard_errors`).

A batch size below :data:`SMALL_BATCH` (but above 1) is a warning: such batches give noisier, and for
layers after the first biased, statistics; the agreement check then decides. Without an agreement check (no
output found, or ``agreement_samples=0``) only the data checks apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

MIN_BATCHES = 2
MAX_MEAN_STANDARD_ERROR = 0.2
MAX_VARIANCE_RELATIVE_ERROR = 0.25
SMALL_BATCH = 8
COLLAPSE_RATIO = 1e-4
ERROR_GROWTH, ERROR_SLACK = 1.25, 0.01


@dataclass(frozen=True)
class Gate:
    """The gate's findings: ``reasons`` it refuses for (empty: passed), ``warnings`` it only reports, and
    ``blockers``: how many reasons also leave ``diagnose`` without a verdict."""

    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: how many of ``reasons`` leave no diagnosis either (degenerate data, one batch); the others (uncertain
    #: statistics, a contradicted repair) concern the repair only
    blockers: int = 0

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def conclusive(self) -> bool:
        """Whether the data supports a diagnosis: no blocker (uncertainty is taken into account by the per-layer
        noise test of :class:`ckptfix.report.DiagnosisReport`; a contradicted repair says nothing of the stored
        statistics)."""
        return self.blockers == 0

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons), "warnings": list(self.warnings)}


def _names(items: Sequence, most: int = 3) -> str:
    shown = ", ".join(str(item) for item in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def check(layers, *, num_samples: int, num_batches: int, batch_size: int, samples_identical: bool,
          agreement=None, mismatch: str | None = None) -> Gate:
    """The gate's findings for measured ``layers`` (:class:`~ckptfix.report.LayerReport`, with standard errors),
    the run's ``agreement`` (:class:`~ckptfix.diagnostics.agreement.Agreement` or None) and a preprocessing
    ``mismatch`` (:attr:`ckptfix.diagnostics.mismatch.Mismatch.message`, or None)."""
    reasons, warnings, uncertain_layers = [], [], []
    if samples_identical:
        reasons.append(f"all {num_samples} calibration sample(s) are identical: statistics of one input say "
                       "nothing of the data; give varied samples")
    if batch_size == 1:
        reasons.append("--batch-size 1: BN on one sample's statistics is instance normalisation, not what training "
                       f"computed; use --batch-size {SMALL_BATCH} or more")
    elif batch_size < SMALL_BATCH:
        warnings.append(f"--batch-size {batch_size} is below {SMALL_BATCH}: batch statistics this small differ from "
                        "training's; the agreement check decides whether the result is written")
    if num_batches < MIN_BATCHES:
        reasons.append(f"{num_samples} sample(s) in {num_batches} batch: too little data to estimate how precise the "
                       f"statistics are; give at least {MIN_BATCHES} batches (more samples or a smaller --batch-size)")
    else:
        uncertain_layers = [layer for layer in layers
                            if layer.mean_standard_error > MAX_MEAN_STANDARD_ERROR
                            or layer.variance_relative_error > MAX_VARIANCE_RELATIVE_ERROR]
        if uncertain_layers:
            worst = max(uncertain_layers,
                        key=lambda layer: max(layer.mean_standard_error, layer.variance_relative_error))
            reasons.append(
                f"too little data: {len(uncertain_layers)} BN layer(s) "
                f"({_names([layer.name for layer in uncertain_layers])}) have "
                f"statistics uncertain beyond ±{MAX_MEAN_STANDARD_ERROR:g}σ (mean) or ±"
                f"{MAX_VARIANCE_RELATIVE_ERROR:.0%} (variance) (worst: {worst.name}, mean ±"
                f"{worst.mean_standard_error:.2g}σ, variance ±{worst.variance_relative_error:.0%}) over "
                f"{num_samples} samples; give more calibration data")
    blockers = len(reasons) - (1 if uncertain_layers else 0)
    for layer in layers:
        collapsed = collapsed_channels(layer)
        if collapsed.size:
            reasons.append(
                f"BN layer {layer.name}: {collapsed.size} of {layer.channels} channel(s) ({_names(collapsed.tolist())})"
                f" have almost no variance in the calibration data where the stored variance does not: blank or "
                "constant inputs, or images scaled unlike the training data? check the data and --preprocess (--force "
                "if these channels are dead in the model)")
            blockers += 1
            break
    if mismatch:  # the agreement check cannot see it: no verdict either
        reasons.append(mismatch)
        blockers += 1
    if agreement is not None:
        reasons += contradiction(agreement)
    return Gate(reasons, warnings, blockers)


def collapsed_channels(layer) -> np.ndarray:
    """Channels whose new variance fell below ``COLLAPSE_RATIO`` of a stored variance above epsilon. Not for a
    layer holding the initial 0 / 1 statistics: its variance of 1 says nothing, and a real model's dead
    channels (no variance on any data) would look collapsed against it."""
    old, new = np.asarray(layer.old_variance, np.float64), np.asarray(layer.new_variance, np.float64)
    if np.all(old == 1) and np.all(np.asarray(layer.old_mean) == 0):
        return np.array([], np.int64)
    return np.flatnonzero((old > layer.epsilon) & (new < COLLAPSE_RATIO * old))


def contradiction(agreement) -> list[str]:
    """Why the agreement check says the new statistics make the model worse (empty: it does not); a model with
    several outputs is judged output by output."""
    reasons = []
    for one in agreement.outputs or (agreement,):
        where = f" of {one.output_tensor}" if agreement.outputs else ""
        lost, gained = one.top1_lost, one.top1_gained
        if lost - gained > max(2.0, 2.0 * math.sqrt(lost + gained)):
            reasons.append(f"the agreement check contradicts the repair: top-1 agreement{where} with training mode "
                           f"falls from {one.top1_before:.0%} to {one.top1_after:.0%} ({lost} lost, {gained} gained)")
        before, after = one.relative_error_before, one.relative_error_after
        if after > ERROR_GROWTH * before + ERROR_SLACK:
            reasons.append(f"the agreement check contradicts the repair: the relative output error{where} grows "
                           f"from {before:.3g} to {after:.3g}")
    return reasons
