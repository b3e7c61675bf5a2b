"""What a decision is for each kind of output (sigmoid, multi-label, regression, classes), and the figures a
repair is judged by: the share of decisions it changes and their stability under the statistics' uncertainty."""

import numpy as np
import pytest

from ckptfix.diagnostics.agreement import (BINARY, CLASSES, LABELS, REGRESSION, compare, output_kind,
                                           perturbed_statistics, with_stability)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("values, kind", [
    (np.random.default_rng(0).normal(size=(64, 5)), CLASSES),  # logits
    (np.eye(4)[np.random.default_rng(1).integers(0, 4, 32)] * 0.9 + 0.025, CLASSES),  # softmax rows sum to 1
    (_sigmoid(np.random.default_rng(2).normal(size=(32, 6))), LABELS),  # independent sigmoids
    (_sigmoid(np.random.default_rng(3).normal(size=(32, 1))), BINARY),
    (np.random.default_rng(4).normal(size=(32, 1)) * 10, REGRESSION),
])
def test_the_kind_is_read_from_the_outputs(values, kind):
    assert output_kind(values) == kind


def test_one_sigmoid_is_judged_by_its_decisions_at_one_half():
    """argmax over one column always agrees; the 0.5 decision does not (issue 32 item 4)."""
    reference = _sigmoid(np.linspace(-3, 3, 200)[:, None])
    before = reference.copy()
    before[90:110] = 1 - before[90:110]  # 20 samples near the boundary flip their decision
    agreement = compare("prob:0", reference, before, reference)
    assert agreement.kind == BINARY
    assert agreement.top1_before == pytest.approx(0.9) and agreement.top1_after == 1.0
    assert agreement.changed == pytest.approx(0.1)
    assert "(decisions at 0.5)" in agreement.summary()


def test_multi_label_outputs_count_each_label():
    rng = np.random.default_rng(5)
    reference = _sigmoid(rng.normal(size=(10, 8)))
    before = reference.copy()
    before[:, 0] = 1 - before[:, 0]  # one label of eight wrong in every sample
    agreement = compare("pitch", reference, before, reference)
    assert agreement.kind == LABELS and agreement.num_compared == 10  # units; 8 decisions each
    assert agreement.top1_before == pytest.approx(7 / 8)
    assert "of the labels of 10 samples" in agreement.summary()


def test_regression_outputs_are_judged_by_relative_error_only():
    rng = np.random.default_rng(6)
    reference = rng.normal(size=(50, 1)) * 5
    agreement = compare("y:0", reference, reference * 3, reference)
    assert agreement.kind == REGRESSION and not agreement.decides
    assert agreement.top1_before is None and agreement.changed is None
    assert agreement.relative_error_before == pytest.approx(2.0) and agreement.improvement == pytest.approx(2.0)
    assert agreement.to_dict()["top1_before"] is None
    assert "regression output" in agreement.summary()


def test_changed_counts_the_decisions_the_repair_flips():
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(100, 4))
    before = reference.copy()
    before[:30] = -before[:30]
    agreement = compare("logits:0", reference, before, reference)
    assert agreement.changed == pytest.approx(np.mean(np.argmax(before, -1) != np.argmax(reference, -1)))
    assert agreement.top1_gained - agreement.top1_lost == round(agreement.changed * 100)


def test_stability_is_the_share_of_repaired_decisions_a_perturbation_flips():
    rng = np.random.default_rng(8)
    after = rng.normal(size=(200, 3))
    perturbed = after.copy()
    perturbed[:10] = -perturbed[:10]
    flipped = np.mean(np.argmax(perturbed, -1) != np.argmax(after, -1))
    agreement = with_stability(compare("logits:0", after, after, after), after, perturbed)
    assert agreement.unstable == pytest.approx(flipped) and agreement.unstable > 0
    assert f"stable to {flipped:.1%}" in agreement.summary()
    several = compare("a,b", {"a": after, "b": after}, {"a": after, "b": after}, {"a": after, "b": after})
    combined = with_stability(several, {"a": after, "b": after}, {"a": after, "b": perturbed})
    assert combined.unstable == pytest.approx(flipped) and combined.outputs[0].unstable == 0


def test_perturbed_statistics_move_by_their_standard_errors():
    """Over many channels the draws' spread equals the standard errors given (in their units)."""
    channels = 20000
    mean, variance, eps = np.full(channels, 2.0), np.full(channels, 3.0), 1e-3
    new_mean, new_variance = perturbed_statistics(mean, variance, eps, np.full(channels, 0.1),
                                                  np.full(channels, 0.05), np.random.default_rng(9))
    assert np.std((new_mean - mean) / np.sqrt(variance + eps)) == pytest.approx(0.1, rel=0.03)
    assert np.std((new_variance + eps) / (variance + eps) - 1) == pytest.approx(0.05, rel=0.03)
    assert np.all(new_variance >= 0)
