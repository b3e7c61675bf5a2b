"""The repair gate's rules on their own (pure functions), each in both directions: the output-level
"enough data" rule, frozen layers, degenerate data. The decisions on real models: tests/decisions/."""

from dataclasses import replace

import numpy as np
import pytest

from ckptfix.data.batching import Variety
from ckptfix.diagnostics import gate
from ckptfix.diagnostics.agreement import compare, with_stability
from ckptfix.report import LayerReport


def _layer(name="bn", channels=8, mean_se=0.05, var_se=0.05, frozen=False) -> LayerReport:
    ones = np.ones(channels)
    return LayerReport(name=name, kind="fused", channels=channels, mean_key=f"{name}/moving_mean",
                       variance_key=f"{name}/moving_variance", variance_convention="bessel", count=100,
                       old_mean=0 * ones, new_mean=0.5 * ones, old_variance=ones, new_variance=2 * ones,
                       mean_standard_errors=np.full(channels, mean_se), variance_relative_errors=np.full(channels, var_se),
                       frozen=frozen)


def _varied() -> Variety:
    variety = Variety()
    variety.see(np.random.default_rng(0).uniform(size=(16, 4, 4, 3)))
    return variety


def _agreement(before_agree: int, after_agree: int, unstable: int, n: int = 200):
    """An agreement over ``n`` samples: ``before_agree`` / ``after_agree`` of them agree with training mode,
    and ``unstable`` of the repaired decisions flip under the perturbation."""
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(n, 3)) + np.eye(3)[rng.integers(0, 3, n)] * 3
    flip = lambda out, k: np.concatenate([-out[:k], out[k:]])  # noqa: E731
    before, after = flip(reference, n - before_agree), flip(reference, n - after_agree)
    perturbed = np.concatenate([after[:n - unstable], -after[n - unstable:]])
    return with_stability(compare("logits:0", reference, before, after), after, perturbed)


def _check(layers, agreement=None, **overrides):
    given = dict(num_samples=200, batch_size=32, variety=_varied(), agreement=agreement)
    return gate.check(layers, **{**given, **overrides})


def test_an_unstable_repair_that_gains_nothing_is_refused():
    """A healthy model (agreement 100% before and after) whose repaired decisions flip by 5% under the
    statistics' uncertainty: the data leaves the repair's outcome to chance."""
    found = _check([_layer()], _agreement(200, 200, 10))
    assert not found.passed and "too little data" in found.reasons[0] and "5.0%" in found.reasons[0]
    assert found.conclusive  # diagnose still judges the stored statistics


def test_an_unstable_repair_that_gains_far_more_is_written():
    """A stale model: 20% -> 100%; 5% instability cannot undo an 80-point gain."""
    assert _check([_layer()], _agreement(40, 200, 10)).passed


def test_stable_repairs_pass_and_noisy_channels_are_only_a_warning():
    noisy = _layer(mean_se=0.5)
    found = _check([noisy], _agreement(200, 200, 0))
    assert found.passed and "the outputs do not depend on them" in found.warnings[0]


def test_without_outputs_the_layers_are_judged_by_their_rms_standard_errors():
    one_noisy_channel = replace(_layer(channels=100), mean_standard_errors=np.r_[np.full(99, 0.01), 0.9])
    assert _check([one_noisy_channel]).passed  # RMS 0.09: one channel does not refuse
    assert "no output to judge" in _check([_layer(mean_se=0.3)]).reasons[0]


def test_layers_all_frozen_while_training_are_refused_unless_adapting():
    frozen = [_layer("a", frozen=True), _layer("b", frozen=True)]
    found = _check(frozen, _agreement(200, 200, 0), frozen=["a", "b"])
    assert not found.passed and "--adapt" in found.reasons[0] and found.conclusive
    assert _check(frozen, _agreement(200, 200, 0), frozen=["a", "b"], adapt=True).passed


@pytest.mark.parametrize("samples, why", [
    (np.zeros((32, 4, 4, 3)), "are identical"),
    (np.random.default_rng(2).uniform(size=(1, 4, 4, 3)) + np.random.default_rng(3).normal(0, 1e-4, (32, 4, 4, 3)),
     "near-copies"),
    (np.random.default_rng(4).uniform(size=(32, 1, 1, 1)) * np.ones((32, 4, 4, 3)), "constant"),
])
def test_degenerate_data_blocks_both_commands(samples, why):
    variety = Variety()
    variety.see(samples)
    found = _check([_layer()], _agreement(40, 200, 0), variety=variety)
    assert why in found.reasons[0] and not found.conclusive


def test_batch_size_one_blocks_and_small_batches_warn():
    assert not _check([_layer()], batch_size=1).conclusive
    assert _check([_layer()], batch_size=4).warnings and _check([_layer()], batch_size=4).passed


def test_one_batch_standard_errors_are_those_of_independent_samples():
    """One batch of S samples: SE(mean) = sqrt(V / S) and SE(V) = V sqrt(2 / (S - 1)), checked on the spread of
    many simulated batches of normal samples."""
    from ckptfix.stats import one_batch_standard_errors

    rng = np.random.default_rng(0)
    samples, variance = 32, 4.0
    draws = rng.normal(0.0, 2.0, (20000, samples))
    mean_se, variance_se = one_batch_standard_errors(np.array([variance]), 0.0, samples)
    assert np.std(draws.mean(1)) / 2.0 == pytest.approx(mean_se[0], rel=0.03)
    assert np.std(draws.var(1, ddof=1)) / variance == pytest.approx(variance_se[0], rel=0.03)
    assert np.isinf(one_batch_standard_errors(np.array([variance]), 0.0, 1)[0]).all()
