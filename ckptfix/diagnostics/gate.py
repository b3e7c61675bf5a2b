"""The repair gate: new statistics are written only when the run's own evidence supports them.

``recalibrate`` refuses to write (:class:`~ckptfix.errors.RepairRefused`, exit 5) unless ``--force``, and
``diagnose`` gives no verdict (``inconclusive``, exit 5) when the data is **degenerate** (a *blocker*):

* every calibration sample is identical (one sample included), or **near-identical**: the samples differ by
  less than :data:`~ckptfix.data.batching.NEAR_IDENTICAL` of their own contrast (one image with faint noise
  added, :class:`~ckptfix.data.batching.Variety`);
* every sample is (nearly) **flat**: it varies within itself by less than that fraction of how much the samples
  differ (blank or constant images);
* the batch size is 1 (BN on one sample's statistics is instance normalisation, not what training computed);
* a layer has channels whose variance collapses: ``new var < 1e-4 * stored var`` where the stored variance
  exceeds the layer's epsilon (not checked against the initial 0 / 1 statistics, where a real model's dead
  channels would look collapsed);
* the data looks **preprocessed unlike the training data** (:mod:`ckptfix.diagnostics.mismatch`: images whose
  first BN layer's stored statistics are far from the new ones, in mean or in variance): the agreement check
  cannot see it, since both modes see the same wrongly scaled inputs.

``recalibrate`` also refuses (``diagnose`` still gives a verdict) when the **repair itself** is not supported:

* **the agreement check contradicts it**: decision agreement of inference mode with training mode falls --
  of the decisions the repair changes, ``lost`` now disagree and ``gained`` now agree; refused when ``lost -
  gained > max(2, 2 * sqrt(lost + gained))`` (a paired sign test at about two standard deviations) -- or the
  relative output error grows: ``after > 1.25 * before + 0.01``;
* **its outcome is left to chance by too little data**, judged at the outputs: moving the new statistics
  within their standard errors flips a share ``unstable`` of the repaired decisions
  (:func:`~ckptfix.diagnostics.agreement.with_stability`); refused when ``unstable > MAX_UNSTABLE`` and the
  repair's improvement of the agreement is less than ``UNSTABLE_MARGIN * unstable`` (the uncertainty could
  undo what the repair gains). Regression outputs: the same with the relative output change under the
  perturbation and the fall of the relative error. A noisy channel that moves no decision is a warning only.
  Without an agreement check (no output found, ``agreement_samples=0``) the statistics are judged layer by
  layer instead: the RMS over channels of the standard errors above :data:`MAX_MEAN_STANDARD_ERROR` (mean, in
  ``sqrt(var + eps)``) or :data:`MAX_VARIANCE_RELATIVE_ERROR` (``var + eps``);
* **every measured layer was frozen while training** (Keras ``trainable=False``) and ``adapt`` is not set:
  their stored statistics are what the weights were trained against.

A batch size below :data:`SMALL_BATCH` (but above 1) is a warning. One batch is judged like several, its
standard errors estimated from its samples (:func:`ckptfix.stats.one_batch_standard_errors`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

MAX_MEAN_STANDARD_ERROR = 0.2
MAX_VARIANCE_RELATIVE_ERROR = 0.25
SMALL_BATCH = 8
COLLAPSE_RATIO = 1e-4
ERROR_GROWTH, ERROR_SLACK = 1.25, 0.01
#: share of repaired decisions (or relative output change) that the statistics' uncertainty may flip before the
#: gate asks whether the repair gains more than that
MAX_UNSTABLE = 0.02
#: the repair's improvement must exceed the instability by this factor when the instability passes MAX_UNSTABLE
UNSTABLE_MARGIN = 2.0


@dataclass(frozen=True)
class Gate:
    """The gate's findings: ``reasons`` it refuses for (empty: passed), ``warnings`` it only reports, and
    ``blockers``: how many reasons also leave ``diagnose`` without a verdict."""

    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: how many of ``reasons`` leave no diagnosis either (degenerate data, one batch); the others (a repair the
    #: outputs do not support, frozen layers) concern the repair only
    blockers: int = 0

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def conclusive(self) -> bool:
        """Whether the data supports a diagnosis: no blocker."""
        return self.blockers == 0

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons), "warnings": list(self.warnings)}


def _names(items: Sequence, most: int = 3) -> str:
    shown = ", ".join(str(item) for item in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def degenerate(layers, *, num_samples: int, batch_size: int, variety) -> list[str]:
    """Why the data cannot support statistics at all (the blockers of the module docstring)."""
    reasons = []
    if variety.identical:
        reasons.append(f"all {num_samples} calibration sample(s) are identical: statistics of one input say "
                       "nothing of the data; give varied samples")
    elif variety.near_identical:
        reasons.append(f"the {num_samples} calibration samples are near-copies of one another (they differ by "
                       f"{math.sqrt(variety.spread):.2g} RMS against a contrast of {math.sqrt(variety.contrast):.2g} "
                       "within a sample): statistics of one input say nothing of the data; give varied samples")
    elif variety.flat:
        reasons.append(f"every one of the {num_samples} calibration samples is (nearly) constant across its "
                       "values: blank or constant images? check the data and --preprocess")
    if batch_size == 1:
        reasons.append("batch size 1: BN on one sample's statistics is instance normalisation, not what training "
                       f"computed; use a batch size of {SMALL_BATCH} or more")
    for layer in layers:
        collapsed = collapsed_channels(layer)
        if collapsed.size:
            reasons.append(
                f"BN layer {layer.name}: {collapsed.size} of {layer.channels} channel(s) ({_names(collapsed.tolist())})"
                f" have almost no variance in the calibration data where the stored variance does not: blank or "
                "constant inputs, or images scaled unlike the training data? check the data and --preprocess (--force "
                "if these channels are dead in the model)")
            break
    return reasons


def check(layers, *, num_samples: int, batch_size: int, variety, agreement=None,
          frozen: Sequence[str] = (), adapt: bool = False, mismatch: str | None = None) -> Gate:
    """The gate's findings for measured ``layers`` (:class:`~ckptfix.report.LayerReport`, with standard errors),
    the data's ``variety`` (:class:`~ckptfix.data.batching.Variety`), the run's ``agreement``
    (:class:`~ckptfix.diagnostics.agreement.Agreement` or None), the measured layers that were ``frozen``
    while training and a preprocessing ``mismatch`` (:attr:`ckptfix.diagnostics.mismatch.Mismatch.message`)."""
    reasons = degenerate(layers, num_samples=num_samples, batch_size=batch_size, variety=variety)
    if mismatch:  # the agreement check cannot see it: no verdict either
        reasons.append(mismatch)
    blockers = len(reasons)
    warnings = []
    if 1 < batch_size < SMALL_BATCH:
        warnings.append(f"batch size {batch_size} is below {SMALL_BATCH}: batch statistics this small differ from "
                        "training's; the agreement check decides whether the result is written")
    if frozen and not adapt and len(frozen) == len(layers):
        reasons.append(f"the {len(frozen)} BN layer(s) measured ({_names(list(frozen))}) were frozen while training "
                       "(trainable=False): their stored statistics are what the weights were trained against. "
                       "To adapt them to this data anyway (domain adaptation), pass --adapt")
    if not blockers:
        if agreement is not None:
            reasons += contradiction(agreement)
            unsteady, warning = instability(agreement, layers)
            reasons += unsteady
            warnings += warning
        else:
            reasons += uncertain_layers(layers, num_samples)
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
        if one.decides and lost - gained > max(2.0, 2.0 * math.sqrt(lost + gained)):
            reasons.append(f"the agreement check contradicts the repair: decision agreement{where} with training "
                           f"mode falls from {one.top1_before:.0%} to {one.top1_after:.0%} ({lost} lost, {gained} gained)")
        before, after = one.relative_error_before, one.relative_error_after
        if after > ERROR_GROWTH * before + ERROR_SLACK:
            reasons.append(f"the agreement check contradicts the repair: the relative output error{where} grows "
                           f"from {before:.3g} to {after:.3g}")
    return reasons


def instability(agreement, layers) -> tuple[list[str], list[str]]:
    """(reasons, warnings) from the outputs' stability under the statistics' uncertainty (module docstring),
    output by output; the warning names noisy channels that the outputs do not mind."""
    reasons = []
    for one in agreement.outputs or (agreement,):
        where = f" of {one.output_tensor}" if agreement.outputs else ""
        if one.unstable is not None:
            shaky, gain = one.unstable, one.top1_after - one.top1_before
            what = f"{shaky:.1%} of the repaired decisions{where}"
        elif one.relative_instability is not None:
            shaky, gain = one.relative_instability, one.relative_error_before - one.relative_error_after
            what = f"the repaired outputs{where} by {shaky:.2g} (relative)"
        else:
            continue
        if shaky > MAX_UNSTABLE and gain < UNSTABLE_MARGIN * shaky:
            reasons.append(f"too little data: moving the new statistics within their standard errors changes {what}, "
                           f"more than the repair gains ({gain:+.1%}); give more calibration data")
    warnings = []
    if not reasons:
        noisy = [layer for layer in layers if layer.mean_standard_error > MAX_MEAN_STANDARD_ERROR
                 or layer.variance_relative_error > MAX_VARIANCE_RELATIVE_ERROR]
        if noisy:
            warnings.append(f"{len(noisy)} BN layer(s) ({_names([layer.name for layer in noisy])}) have channels "
                            f"uncertain beyond ±{MAX_MEAN_STANDARD_ERROR:g}σ (mean) or ±"
                            f"{MAX_VARIANCE_RELATIVE_ERROR:.0%} (variance) on this data; the outputs do not depend "
                            "on them beyond the uncertainty reported")
    return reasons, warnings


def _rms(values) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def uncertain_layers(layers, num_samples: int) -> list[str]:
    """Without outputs to judge by: layers whose standard errors, RMS over channels, pass the limits."""
    uncertain = [layer for layer in layers if layer.mean_standard_errors is not None and (
        _rms(layer.mean_standard_errors) > MAX_MEAN_STANDARD_ERROR
        or _rms(layer.variance_relative_errors) > MAX_VARIANCE_RELATIVE_ERROR)]
    if not uncertain:
        return []
    return [f"too little data: {len(uncertain)} BN layer(s) ({_names([layer.name for layer in uncertain])}) have "
            f"statistics uncertain beyond ±{MAX_MEAN_STANDARD_ERROR:g}σ (mean) or ±{MAX_VARIANCE_RELATIVE_ERROR:.0%} "
            f"(variance), RMS over channels, over {num_samples} samples, and no output to judge the repair by; "
            "give more calibration data"]
