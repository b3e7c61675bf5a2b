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

Uncertainty, from the variation *between batches* (BN couples the samples of a batch, so batches, not samples,
are the independent draws). With ``B`` batches, weights ``n_b / N`` and the pooled mean ``M``::

    SE(M)^2 = B / (B - 1) * sum_b (n_b / N)^2 * (m_b - M)^2
    SE(V)^2 = B / (B - 1) * sum_b (n_b / N)^2 * (v_b - V_w)^2,   v_b = M2_b / n_b,  V_w = sum_b M2_b / N

(the cluster-robust variance of a ratio estimator; for equal batches ``SE(M) = sd(m_b) / sqrt(B)``). The
between-batch part of the pooled variance is left out of ``SE(V)``: it is of the order of ``SE(M)^2``. Both
sums are kept as weighted (``u_b = n_b^2``) running means and squared deviations, merged like the moments, so
workers' partial sums combine exactly. :meth:`PooledMoments.standard_errors` reports them per channel as
``SE(M) / sqrt(V + eps)`` and ``SE(V) / (V + eps)``; with one batch they are infinite, and
:func:`one_batch_standard_errors` estimates them instead as if the batch's ``S`` samples were independent draws
of normal values: ``SE(M) = sqrt(V / S)``, ``SE(V) = V * sqrt(2 / (S - 1))`` (a sample, not each of its
positions, is the unit: positions of one image are not independent, so this errs toward too large).
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
    #: between-batch spread (see the module docstring): sum of u_b = n_b^2, and the u-weighted running mean and
    #: squared deviations of the batch means m_b and of the batch variances v_b
    _sum_u: float = field(default=0.0, init=False, repr=False)
    _u_mean_m: np.ndarray = field(init=False, repr=False)
    _u_m2_m: np.ndarray = field(init=False, repr=False)
    _u_mean_v: np.ndarray = field(init=False, repr=False)
    _u_m2_v: np.ndarray = field(init=False, repr=False)
    _within_m2: np.ndarray = field(init=False, repr=False)  # sum_b M2_b

    def __post_init__(self) -> None:
        zeros = lambda: np.zeros(self.channels, np.float64)  # noqa: E731
        self.mean, self.m2 = zeros(), zeros()
        self._sum_batch_mean = zeros()
        self._sum_batch_var_biased = zeros()
        self._sum_batch_var_bessel = zeros()
        self._u_mean_m, self._u_m2_m, self._u_mean_v, self._u_m2_v = zeros(), zeros(), zeros(), zeros()
        self._within_m2 = zeros()

    def _merge_spread(self, u: float, mean_m, m2_m, mean_v, m2_v) -> None:
        """Chan's weighted update of the between-batch spread with another set of weight ``u``."""
        total = self._sum_u + u
        d_m, d_v = mean_m - self._u_mean_m, mean_v - self._u_mean_v
        self._u_mean_m = self._u_mean_m + d_m * (u / total)
        self._u_mean_v = self._u_mean_v + d_v * (u / total)
        self._u_m2_m = self._u_m2_m + m2_m + d_m**2 * (self._sum_u * u / total)
        self._u_m2_v = self._u_m2_v + m2_v + d_v**2 * (self._sum_u * u / total)
        self._sum_u = total

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
        self._within_m2 = self._within_m2 + m2_b
        zeros = np.zeros(self.channels)
        self._merge_spread(float(n_b) ** 2, m_b, zeros, m2_b / n_b, zeros)

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
        self._within_m2 = self._within_m2 + other._within_m2
        self._merge_spread(other._sum_u, other._u_mean_m, other._u_m2_m, other._u_mean_v, other._u_m2_v)

    def standard_errors(self, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
        """Per channel: ``SE(M) / sqrt(V + eps)`` and ``SE(V) / (V + eps)`` (module docstring), ``V`` the biased
        pooled variance; ``inf`` with fewer than two batches."""
        if self.num_batches < 2 or self.count == 0:
            infinite = np.full(self.channels, np.inf)
            return infinite, infinite.copy()
        b, n = self.num_batches, float(self.count)
        variance = self.m2 / n
        within = self._within_m2 / n
        spread_m = self._u_m2_m + self._sum_u * (self._u_mean_m - self.mean) ** 2
        spread_v = self._u_m2_v + self._sum_u * (self._u_mean_v - within) ** 2
        scale = b / (b - 1) / n**2
        scale2 = np.maximum(variance + epsilon, 1e-300)
        return np.sqrt(scale * spread_m / scale2), np.sqrt(scale * spread_v) / scale2

    @property
    def array_size(self) -> int:
        return 3 + 10 * self.channels

    def to_array(self) -> np.ndarray:
        """The state as one float64 vector (count, num_batches, mean, M2, the three batch-mean sums, the
        between-batch spread), to send."""
        return np.concatenate([[float(self.count), float(self.num_batches)], self.mean, self.m2, self._sum_batch_mean,
                               self._sum_batch_var_biased, self._sum_batch_var_bessel, [self._sum_u], self._u_mean_m,
                               self._u_m2_m, self._u_mean_v, self._u_m2_v, self._within_m2])

    @classmethod
    def from_array(cls, channels: int, array: np.ndarray) -> PooledMoments:
        """The inverse of :meth:`to_array`."""
        pooled = cls(channels)
        array = np.asarray(array, np.float64)
        pooled.count, pooled.num_batches = int(array[0]), int(array[1])
        first = array[2:2 + 5 * channels].reshape(5, channels)
        pooled.mean, pooled.m2 = first[0].copy(), first[1].copy()
        pooled._sum_batch_mean, pooled._sum_batch_var_biased, pooled._sum_batch_var_bessel = (p.copy() for p in first[2:])
        pooled._sum_u = float(array[2 + 5 * channels])
        spread = array[3 + 5 * channels:].reshape(5, channels)
        pooled._u_mean_m, pooled._u_m2_m, pooled._u_mean_v, pooled._u_m2_v, pooled._within_m2 = (p.copy() for p in spread)
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


def one_batch_standard_errors(variance: np.ndarray, epsilon: float, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The standard errors of one batch of ``samples`` samples (module docstring), in the units of
    :meth:`PooledMoments.standard_errors`; infinite for fewer than 2 samples."""
    variance = np.asarray(variance, np.float64)
    if samples < 2:
        infinite = np.full(variance.shape, np.inf)
        return infinite, infinite.copy()
    scale2 = np.maximum(variance + epsilon, 1e-300)
    return np.sqrt(variance / samples / scale2), variance * np.sqrt(2.0 / (samples - 1)) / scale2
