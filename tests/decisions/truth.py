"""Ground truth of a case, from held-out accuracies measured by plain TensorFlow evaluation, never from the tool's
verdict (docs/decisions.md states the same definitions):

    acc_stored    the model as given, inference mode (its stored moving statistics)
    acc_repair    inference mode with the statistics ckptfix computes from this case's calibration data and
                  options (written with force=True into a scratch output: a measurement of what the repair
                  would do, not a test of it)
    acc_oracle    inference mode with statistics from ORACLE_FACTOR x more data of the domain (force-written)
    acc_training  BN on batch statistics (the mode the weights were trained in, for most subjects): reference

A difference counts when it passes ``margin(p, q)``: at least MIN_MARGIN and at least SE_MULTIPLE standard errors
of the difference of two held-out accuracies of HELD_OUT_SIZE samples each. A loss of the repair against the
stored statistics (harm) counts from ``harm_margin(p, q)``: at least HARM_MARGIN and HARM_SE_MULTIPLE of the
same (unpaired) standard errors -- larger than the paired ones of two models scored on the same held-out
samples, so still a loss beyond the held-out noise -- since a repair that costs a healthy model two points is
not one to write.

Verdict truth: ``no-verdict`` for degenerate data (policy: one sample, near-copies of one sample, constant
images, batch size 1 cannot support a verdict); else ``needs-repair`` when acc_oracle - acc_stored passes the margin, ``healthy`` when not
(including when the oracle's statistics make the model worse: BN frozen while training).

Gate truth: ``refuse`` for degenerate data (policy), for a model whose BN was frozen while training unless the
case states the intent to adapt it (policy: its stored statistics are what the weights were fitted to), when
the repair is harmful (acc_stored - acc_repair passes the margin) or far worse than the oracle's (acc_oracle -
acc_repair passes the margin: e.g. an early stop on one class); else ``write``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from decisions.subjects import HELD_OUT_SIZE

#: the oracle's statistics come from this many times the calibration data's usual 256 samples
ORACLE_FACTOR = 10
ORACLE_SAMPLES = 256 * ORACLE_FACTOR
MIN_MARGIN = 0.05
SE_MULTIPLE = 3.0
HARM_MARGIN = 0.015
HARM_SE_MULTIPLE = 2.0

VERDICTS = ("needs-repair", "healthy", "no-verdict")
GATES = ("write", "refuse")


def margin(p: float, q: float, n: int = HELD_OUT_SIZE) -> float:
    """The smallest difference between held-out accuracies ``p`` and ``q`` (``n`` samples each) that counts."""
    standard_error = math.sqrt((p * (1 - p) + q * (1 - q)) / n)
    return max(MIN_MARGIN, SE_MULTIPLE * standard_error)


def better(p: float, q: float) -> bool:
    """``p`` exceeds ``q`` by more than held-out noise."""
    return p - q >= margin(p, q)


def harm_margin(p: float, q: float, n: int = HELD_OUT_SIZE) -> float:
    """The smallest loss of the repair (``q``) against the stored statistics (``p``) that counts as harm."""
    return max(HARM_MARGIN, HARM_SE_MULTIPLE * math.sqrt((p * (1 - p) + q * (1 - q)) / n))


@dataclass(frozen=True)
class Truth:
    """The measured accuracies (NaN: not measurable, e.g. the forced repair itself failed) and the two labels."""

    acc_stored: float
    acc_repair: float
    acc_oracle: float
    acc_training: float
    verdict: str
    gate: str
    why: str
    #: the samples the measured repair used, and why its pass ended (``num_samples (stop_reason)``)
    used: str = ""

    def figures(self) -> str:
        return (f"stored {self.acc_stored:.1%}, repair {_pct(self.acc_repair)} (samples used: {self.used}), "
                f"oracle {self.acc_oracle:.1%}, training {self.acc_training:.1%}")


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1%}"


def label(acc_stored: float, acc_repair: float, acc_oracle: float, acc_training: float, *,
          degenerate: str = "", frozen_trained: bool = False, adapt: bool = False, used: str = "") -> Truth:
    """The truth labels from the accuracies and the case's policy facts (see the module docstring)."""
    figures = (acc_stored, acc_repair, acc_oracle, acc_training)
    if degenerate:
        return Truth(*figures, "no-verdict", "refuse", f"degenerate data ({degenerate}): policy", used)
    verdict = "needs-repair" if better(acc_oracle, acc_stored) else "healthy"
    reasons = [f"oracle {'beats' if verdict == 'needs-repair' else 'does not beat'} stored"]
    refuse = []
    if frozen_trained and not adapt:
        refuse.append("BN frozen while training, no intent to adapt (policy)")
    if math.isnan(acc_repair):
        refuse.append("the forced repair fails")
    else:
        if acc_stored - acc_repair >= harm_margin(acc_stored, acc_repair) and not (frozen_trained and adapt):
            # adapting may cost accuracy here
            refuse.append("repair harmful")
        if better(acc_oracle, acc_repair):
            refuse.append("repair far worse than the oracle's")
    gate = "refuse" if refuse else "write"
    return Truth(*figures, verdict, gate, "; ".join(reasons + refuse), used)
