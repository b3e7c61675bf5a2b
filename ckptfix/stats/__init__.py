"""Pooled per-channel statistics: merging per-batch moments exactly, in float64."""

from ckptfix.stats.pooled import BatchMoments, Estimator, PooledMoments, one_batch_standard_errors
from ckptfix.stats.stopping import Checks, UntilStable

__all__ = ["BatchMoments", "Checks", "Estimator", "PooledMoments", "UntilStable", "one_batch_standard_errors"]
