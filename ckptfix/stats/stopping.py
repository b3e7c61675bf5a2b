"""``--until-stable TOL``: stop reading calibration data once every layer's statistics are precise enough.

After each batch (in data order, so the same batches are used whatever the number of devices), from
:data:`MIN_BATCHES` batches on, the run stops when for every chosen layer the worst channel's standard errors
(:meth:`ckptfix.stats.PooledMoments.standard_errors`: between-batch estimates) are both below ``TOL``:
``SE(mean) / sqrt(var + eps) < TOL`` and ``SE(var) / (var + eps) < TOL``. The minimum keeps the standard
errors themselves from resting on a handful of batches (their own relative uncertainty is about
``1 / sqrt(2 (B - 1))``: 18 % at 16 batches). ``--num-samples`` still caps the run, and data that ends first
ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ckptfix.stats.pooled import PooledMoments

#: batches read before the standard errors are trusted to stop the run
MIN_BATCHES = 16


@dataclass(frozen=True)
class UntilStable:
    """The stopping rule: ``tolerance`` on both standard errors, per layer ``epsilons`` (the layers' BN eps)."""

    tolerance: float
    epsilons: Mapping[str, float]

    def reached(self, pooled: Mapping[str, PooledMoments], num_batches: int) -> bool:
        """Whether every layer's worst-channel standard errors are below the tolerance (from MIN_BATCHES on)."""
        if num_batches < MIN_BATCHES:
            return False
        for name, moments in pooled.items():
            mean_errors, variance_errors = moments.standard_errors(self.epsilons[name])
            if not (mean_errors.max() < self.tolerance and variance_errors.max() < self.tolerance):
                return False
        return True
