"""``--until-stable TOL``: stop reading calibration data once every layer's statistics are precise enough.

The rule: for every chosen layer the worst channel's standard errors
(:meth:`ckptfix.stats.PooledMoments.standard_errors`: between-batch estimates) are both below ``TOL``:
``SE(mean) / sqrt(var + eps) < TOL`` and ``SE(var) / (var + eps) < TOL``, with at least :data:`MIN_BATCHES`
batches read. The minimum keeps the standard errors themselves from resting on a handful of batches (their
own relative uncertainty is about ``1 / sqrt(2 (B - 1))``: 18 % at 16 batches).

When the rule is checked (:class:`Checks`): in **rounds**, a round being one batch per worker (one batch in one
process, whatever its devices), after the first round that completes :data:`MIN_BATCHES` batches, then after
the first round that completes at least :data:`GROWTH` times the batches of the last check (at least one more
round). A check costs the merge of every layer's sums (and, in a cluster, their all-gather): geometric spacing
makes it ``O(log B)`` checks for ``B`` batches, and the pass reads at most ~5 % (and one round) beyond the first
stable point. Batches are read in data order, so what was read is a prefix of the batch order, the same on any
number of devices or workers; ``--num-samples`` still caps the run, and data that ends first ends it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ckptfix.stats.pooled import PooledMoments

#: batches read before the standard errors are trusted to stop the run
MIN_BATCHES = 16
#: after the first check, the batches read grow by at least this factor between two checks
GROWTH = 1.05


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


class Checks:
    """After which rounds the rule is checked, for rounds of ``round_size`` batches (the number of workers).

    ``due(rounds)`` is asked after every round, with the rounds completed so far (1, 2, 3, ...); every worker
    asks the same questions in the same order and gets the same answers, so they check together."""

    def __init__(self, round_size: int) -> None:
        self.round_size = round_size
        self._next = MIN_BATCHES

    def due(self, rounds: int) -> bool:
        batches = rounds * self.round_size
        if batches < self._next:
            return False
        self._next = max(batches + 1, math.ceil(batches * GROWTH))
        return True
