"""Exact pooled per-channel statistics from per-batch moments.

Each batch contributes, per channel, ``n_b`` values with mean ``m_b`` and sum of squared deviations
``M2_b = sum((x - m_b)**2)``. Batches are merged with Chan et al.'s parallel update (1979), in float64::

    n   = n_a + n_b
    d   = m_b - m_a
    m   = m_a + d * n_b / n
    M2  = M2_a + M2_b + d**2 * n_a * n_b / n

which equals the statistics of all values concatenated, whatever the batch split, without the precision loss
of ``E[x**2] - E[x]**2`` when ``|mean| >> std``.

Variance conventions: ``biased`` is ``M2 / n``; ``bessel`` is ``M2 / (n - 1)``. TF1's fused BatchNorm moves
its moving variance toward the Bessel-corrected batch variance, non-fused BN toward the biased one; the
layer decides which convention is written back.

Two estimators are offered (:class:`Estimator`):

* ``pooled`` (default): mean and variance of every value seen, as above.
* ``batch-mean``: the plain average over batches of each batch's mean and of each batch's variance (in the
  layer's convention, per batch) -- what a moving average converges to when every batch has the same size.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Estimator(str, enum.Enum):
    POOLED = "pooled"
    BATCH_MEAN = "batch-mean"


@dataclass(frozen=True)
class BatchMoments:
    """One batch's per-channel moments: ``count`` values per channel, their ``mean`` and ``m2``."""

    count: int
    mean: np.ndarray
    m2: np.ndarray


@dataclass
class PooledMoments:
    """Running merge of :class:`BatchMoments` for one layer (float64 throughout)."""

    channels: int
    count: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    num_batches: int = 0
    _sum_batch_mean: np.ndarray = field(init=False, repr=False)
    _sum_batch_var_biased: np.ndarray = field(init=False, repr=False)
    _sum_batch_var_bessel: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        zeros = lambda: np.zeros(self.channels, np.float64)  # noqa: E731
        self.mean, self.m2 = zeros(), zeros()
        self._sum_batch_mean = zeros()
        self._sum_batch_var_biased = zeros()
        self._sum_batch_var_bessel = zeros()

    def add(self, batch: BatchMoments) -> None:
        """Merge one batch (Chan's update)."""
        n_b = int(batch.count)
        if n_b <= 0:
            return
        m_b = np.asarray(batch.mean, np.float64).reshape(self.channels)
        m2_b = np.asarray(batch.m2, np.float64).reshape(self.channels)
        n_a, n = self.count, self.count + n_b
        delta = m_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.count = n
        self.num_batches += 1
        self._sum_batch_mean += m_b
        self._sum_batch_var_biased += m2_b / n_b
        self._sum_batch_var_bessel += m2_b / max(n_b - 1, 1)

    def merge(self, other: PooledMoments) -> None:
        """Merge another layer's partial moments (Chan's update on count / mean / M2; the batch-mean sums add)."""
        if other.count == 0:
            return
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (n_a * n_b / n)
        self.count = n
        self.num_batches += other.num_batches
        self._sum_batch_mean = self._sum_batch_mean + other._sum_batch_mean
        self._sum_batch_var_biased = self._sum_batch_var_biased + other._sum_batch_var_biased
        self._sum_batch_var_bessel = self._sum_batch_var_bessel + other._sum_batch_var_bessel

    @property
    def array_size(self) -> int:
        return 2 + 5 * self.channels

    def to_array(self) -> np.ndarray:
        """The state as one float64 vector (count, num_batches, mean, M2, the three batch-mean sums), to send."""
        return np.concatenate([[float(self.count), float(self.num_batches)], self.mean, self.m2, self._sum_batch_mean,
                               self._sum_batch_var_biased, self._sum_batch_var_bessel])

    @classmethod
    def from_array(cls, channels: int, array: np.ndarray) -> PooledMoments:
        """The inverse of :meth:`to_array`."""
        pooled = cls(channels)
        array = np.asarray(array, np.float64)
        pooled.count, pooled.num_batches = int(array[0]), int(array[1])
        parts = array[2:].reshape(5, channels)
        pooled.mean, pooled.m2 = parts[0].copy(), parts[1].copy()
        pooled._sum_batch_mean, pooled._sum_batch_var_biased, pooled._sum_batch_var_bessel = (p.copy() for p in parts[2:])
        return pooled

    def mean_and_variance(self, estimator: Estimator, bessel: bool) -> tuple[np.ndarray, np.ndarray]:
        """The layer's new (mean, variance) in float64, in the requested variance convention."""
        if self.count == 0:
            raise ValueError("no values were pooled")
        if Estimator(estimator) is Estimator.BATCH_MEAN:
            sums = self._sum_batch_var_bessel if bessel else self._sum_batch_var_biased
            return self._sum_batch_mean / self.num_batches, sums / self.num_batches
        denominator = self.count - 1 if bessel and self.count > 1 else self.count
        return self.mean.copy(), self.m2 / denominator
