"""Drift metrics against their documented formulas, and the verdict thresholds."""

import numpy as np
import pytest

from ckptfix.diagnostics.drift import LOG_VARIANCE_RATIO_THRESHOLD, MEAN_SHIFT_THRESHOLD, layer_drift
from ckptfix.report import drift_bar


def test_metrics_follow_the_formulas():
    new_mean, new_variance = np.array([1.0, 2.0]), np.array([4.0, 0.25])
    old_mean, old_variance = np.array([0.0, 2.5]), np.array([1.0, 1.0])
    drift = layer_drift(old_mean, old_variance, new_mean, new_variance, epsilon=0.0)
    shift = np.array([-1.0 / 2.0, 0.5 / 0.5])
    ratio = np.log([1.0 / 4.0, 1.0 / 0.25])
    assert drift.mean_shift == pytest.approx(np.sqrt(np.mean(shift**2)))
    assert drift.mean_shift_max == pytest.approx(1.0)
    assert drift.log_variance_ratio == pytest.approx(np.sqrt(np.mean(ratio**2)))
    assert drift.worst_channel == 1 and drift.stale


def test_identical_statistics_are_fresh_and_thresholds_decide():
    mean, variance = np.zeros(4), np.ones(4)
    assert not layer_drift(mean, variance, mean, variance).stale
    just_below = layer_drift(mean + MEAN_SHIFT_THRESHOLD * 0.99, variance, mean, variance)
    just_above = layer_drift(mean, variance * np.exp(LOG_VARIANCE_RATIO_THRESHOLD * 1.01), mean, variance)
    assert not just_below.stale and just_above.stale


def test_epsilon_sets_the_scale():
    """Shifts are measured in sqrt(var + eps), variance ratios of var + eps (the scale BN divides by)."""
    drift = layer_drift([0.3], [0.02], [0.1], [0.01], epsilon=0.01)
    assert drift.mean_shift == pytest.approx(0.2 / np.sqrt(0.02))
    assert drift.log_variance_ratio == pytest.approx(np.log(0.03 / 0.02))


def test_a_dead_channel_is_not_hundreds_of_sigma_off():
    """A channel that never fires (stored variance ~1e-27, a mean that moved by 2e-4) next to healthy ones:
    BN divides by sqrt(var + 0.001), so the shift is ~0.006 of the layer's scale, not 190 sigma."""
    old_mean, old_variance = np.array([0.5, -1.0, 2.0, 1.9e-4]), np.array([1.0, 0.5, 2.0, 1e-27])
    new_mean, new_variance = np.array([0.5, -1.0, 2.0, 0.0]), np.array([1.0, 0.5, 2.0, 0.0])
    drift = layer_drift(old_mean, old_variance, new_mean, new_variance)
    assert drift.mean_shift_max == pytest.approx(1.9e-4 / np.sqrt(1e-3))
    assert drift.log_variance_ratio_max == pytest.approx(0.0, abs=1e-12)
    assert not drift.stale


def test_drift_bar_marks_the_threshold():
    assert drift_bar(0.0) == "....." + "|" + "." * 15
    assert drift_bar(1.0) == "#####|" + "." * 15
    assert drift_bar(9.0).endswith("+") and drift_bar(9.0).count("#") == 20
