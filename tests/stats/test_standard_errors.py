"""Standard errors from the variation between batches: honest (they match the spread of the statistics over
independent draws), exact under any split into partial sums, infinite with one batch."""

import numpy as np

from ckptfix.stats import BatchMoments, Checks, PooledMoments, UntilStable
from ckptfix.stats.stopping import GROWTH, MIN_BATCHES


def _pooled(x: np.ndarray, batch: int) -> PooledMoments:
    pooled = PooledMoments(x.shape[1])
    for start in range(0, len(x), batch):
        part = x[start:start + batch]
        pooled.add(BatchMoments(len(part), part.mean(0), ((part - part.mean(0)) ** 2).sum(0)))
    return pooled


def test_reported_standard_errors_match_the_observed_spread():
    rng = np.random.default_rng(0)
    scale, offset = np.array([1.0, 10.0, 0.1, 3.0]), np.array([0.0, 100.0, -5.0, 2.0])
    means, variances, mean_errors, variance_errors = [], [], [], []
    for _ in range(300):
        x = rng.standard_normal((2000, 4)) ** 2 * scale + offset  # skewed, large offsets
        pooled = _pooled(x, 32)
        mean, variance = pooled.mean_and_variance("pooled", bessel=False)
        se_mean, se_variance = pooled.standard_errors(0.0)
        means.append(mean), variances.append(variance)
        mean_errors.append(se_mean * np.sqrt(variance)), variance_errors.append(se_variance * variance)
    for observed, reported in ((np.std(means, 0), np.mean(mean_errors, 0)),
                               (np.std(variances, 0), np.mean(variance_errors, 0))):
        ratio = reported / observed
        assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), ratio
        assert np.all((ratio > 0.85) & (ratio < 1.15)), ratio  # in fact within 15 % at 300 draws


def test_partial_sums_merge_exactly_and_one_batch_is_infinite():
    x = np.random.default_rng(1).normal(3.0, 2.0, (1000, 5))
    whole = _pooled(x, 40)
    first, second = _pooled(x[:520], 40), _pooled(x[520:], 40)
    first.merge(PooledMoments.from_array(5, second.to_array()))  # as sent between workers
    for a, b in zip(first.standard_errors(1e-3), whole.standard_errors(1e-3)):
        np.testing.assert_allclose(a, b, rtol=1e-9)
    single = _pooled(x[:40], 40)
    assert all(np.isinf(e).all() for e in single.standard_errors(1e-3))


def test_until_stable_waits_for_the_minimum_then_for_every_layer():
    rng = np.random.default_rng(2)
    precise, noisy = _pooled(rng.normal(0, 1, (32 * 40, 3)), 32), _pooled(rng.normal(0, 1, (4 * 40, 3)), 4)
    rule = UntilStable(0.05, {"a": 1e-3, "b": 1e-3})
    assert rule.reached({"a": precise}, 40) and not rule.reached({"a": precise}, MIN_BATCHES - 1)
    assert not rule.reached({"a": precise, "b": noisy}, 40)  # one imprecise layer keeps the run going


def test_checks_start_at_the_minimum_and_grow_geometrically_in_whole_rounds():
    for workers in (1, 2, 3, 8):
        checks = Checks(workers)
        checked = [rounds * workers for rounds in range(1, 20_000) if checks.due(rounds)]
        assert checked[0] == workers * -(-MIN_BATCHES // workers)  # the first round that completes the minimum
        assert all(a < b <= a * GROWTH + workers for a, b in zip(checked, checked[1:]))  # at most a round late
        assert all(b >= a * GROWTH for a, b in zip(checked, checked[1:]))
        assert len(checked) < 20 + np.log(checked[-1] / MIN_BATCHES) / np.log(GROWTH)  # O(log B) checks
