"""The estimator against numpy on the concatenated values, and across batch splits (as fvcore tests PreciseBN)."""

import numpy as np
import pytest

from ckptfix.stats import BatchMoments, Estimator, PooledMoments


def _moments(batch: np.ndarray) -> BatchMoments:
    """Per-channel count/mean/M2 of a (n, C) float32 batch, as the graph computes them (float32, two-pass)."""
    mean = batch.mean(axis=0, dtype=np.float32)
    return BatchMoments(len(batch), mean, ((batch - mean) ** 2).sum(axis=0, dtype=np.float32))


def _pool(values: np.ndarray, batch_size: int) -> PooledMoments:
    pooled = PooledMoments(values.shape[1])
    for start in range(0, len(values), batch_size):
        pooled.add(_moments(values[start : start + batch_size]))
    return pooled


@pytest.fixture(scope="module")
def values() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(1000, 5)) * [1, 2, 0.5, 3, 1e-2] + [0, -3, 10, 1, 0.5]).astype(np.float32)


@pytest.mark.parametrize("batch_size", [1, 2, 7, 32, 64, 1000])
def test_pooled_equals_numpy_on_concatenated_values(values, batch_size):
    mean, variance = _pool(values, batch_size).mean_and_variance(Estimator.POOLED, bessel=False)
    exact = values.astype(np.float64)
    np.testing.assert_allclose(mean, exact.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(variance, exact.var(axis=0), rtol=1e-5)


def test_bessel_convention_divides_by_n_minus_one(values):
    _, variance = _pool(values, 64).mean_and_variance(Estimator.POOLED, bessel=True)
    np.testing.assert_allclose(variance, values.astype(np.float64).var(axis=0, ddof=1), rtol=1e-5)


def test_precision_survives_large_mean_relative_to_spread():
    rng = np.random.default_rng(1)
    values = (1e4 + rng.normal(size=(4096, 3)) * 1e-1).astype(np.float32)
    _, variance = _pool(values, 128).mean_and_variance(Estimator.POOLED, bessel=False)
    np.testing.assert_allclose(variance, values.astype(np.float64).var(axis=0), rtol=1e-3)


def test_batch_mean_estimator_averages_per_batch_statistics(values):
    batches = [values[i : i + 100] for i in range(0, 1000, 100)]
    mean, variance = _pool(values, 100).mean_and_variance(Estimator.BATCH_MEAN, bessel=True)
    np.testing.assert_allclose(mean, np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0), rtol=1e-4)


def test_batch_mean_differs_from_pooled_when_batches_differ():
    shifted = np.concatenate([np.zeros((10, 1)), np.ones((10, 1))]).astype(np.float32)
    pooled = _pool(shifted, 10)
    _, batch_mean_variance = pooled.mean_and_variance(Estimator.BATCH_MEAN, bessel=False)
    _, pooled_variance = pooled.mean_and_variance(Estimator.POOLED, bessel=False)
    assert batch_mean_variance[0] == pytest.approx(0.0)
    assert pooled_variance[0] == pytest.approx(0.25)


def test_counts_add_up(values):
    pooled = _pool(values, 33)
    assert pooled.count == 1000
    assert pooled.num_batches == 31
