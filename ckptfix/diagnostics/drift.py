"""Per-layer drift between stored and freshly computed BN statistics, and the stale/fresh verdict.

Per channel ``c``, on the layer's own scale ``σ_c = sqrt(new_variance_c + ε)``, ``ε`` the layer's BN epsilon
(the scale BN divides by; TF1 / slim / Keras default 0.001):

* mean shift in units of that scale: ``s_c = (old_mean_c - new_mean_c) / σ_c``;
* log variance ratio: ``r_c = ln((old_variance_c + ε) / (new_variance_c + ε))``, the log of the squared factor
  by which the stored statistics rescale the layer's output.

``ε`` keeps a dead channel (variance ~1e-27, e.g. after a ReLU that never fires) from reporting hundreds of
σ for a mean that moved by 1e-4: BN itself divides by ``sqrt(var + ε)``, so such a shift changes nothing.
``var + ε`` is floored at 1e-12 (``ε = 0`` only arises in tests of the formulas).

A layer is summarised by the root mean square over channels of each (``mean_shift``, ``log_variance_ratio``),
their largest magnitude, and the worst channel (largest ``|s_c| + |r_c|``). Verdict: a layer is **stale** when
``mean_shift > 0.25`` or ``log_variance_ratio > 0.3`` (a variance off by more than ×1.35 on average); a
checkpoint is stale when any recalibrated layer is. Statistics recomputed from the same kind of data as the
stored ones (a model trained with its update ops, or one just repaired) sit far below both thresholds; the
classic stale signature (0 / 1 left from initialisation) sits far above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEAN_SHIFT_THRESHOLD = 0.25
DEFAULT_EPSILON = 1e-3  # tf.compat.v1.layers / slim.batch_norm / Keras BatchNormalization default
LOG_VARIANCE_RATIO_THRESHOLD = 0.3


@dataclass(frozen=True)
class LayerDrift:
    """Drift summary of one layer (see the module docstring for the formulas)."""

    mean_shift: float
    mean_shift_max: float
    log_variance_ratio: float
    log_variance_ratio_max: float
    worst_channel: int

    @property
    def score(self) -> float:
        """Drift relative to the thresholds; > 1 means stale."""
        return max(self.mean_shift / MEAN_SHIFT_THRESHOLD, self.log_variance_ratio / LOG_VARIANCE_RATIO_THRESHOLD)

    @property
    def stale(self) -> bool:
        return self.score > 1.0

    def to_dict(self) -> dict:
        return {
            "mean_shift": self.mean_shift,
            "mean_shift_max": self.mean_shift_max,
            "log_variance_ratio": self.log_variance_ratio,
            "log_variance_ratio_max": self.log_variance_ratio_max,
            "worst_channel": self.worst_channel,
            "score": self.score,
            "verdict": "stale" if self.stale else "fresh",
        }


def layer_drift(old_mean, old_variance, new_mean, new_variance, *, epsilon: float = DEFAULT_EPSILON) -> LayerDrift:
    """Drift of stored (old) statistics against recomputed (new) ones, per the module's formulas, with the
    layer's BN ``epsilon``."""
    old_mean, new_mean = np.asarray(old_mean, np.float64), np.asarray(new_mean, np.float64)
    old_scale2 = np.maximum(np.asarray(old_variance, np.float64) + epsilon, 1e-12)
    new_scale2 = np.maximum(np.asarray(new_variance, np.float64) + epsilon, 1e-12)
    shift = (old_mean - new_mean) / np.sqrt(new_scale2)
    ratio = np.log(old_scale2 / new_scale2)
    rms = lambda v: float(np.sqrt(np.mean(v**2)))  # noqa: E731
    return LayerDrift(
        mean_shift=rms(shift),
        mean_shift_max=float(np.max(np.abs(shift))),
        log_variance_ratio=rms(ratio),
        log_variance_ratio_max=float(np.max(np.abs(ratio))),
        worst_channel=int(np.argmax(np.abs(shift) + np.abs(ratio))),
    )
