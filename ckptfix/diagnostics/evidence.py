"""Evidence that drifted statistics are stale -- that inference mode is broken -- not merely from other data.

Drift alone cannot tell a training bug from a domain shift: a healthy model's statistics drift on data from
another distribution too. ``diagnose`` says *stale* only with evidence of one of:

* drifted layers still holding the initial 0 / 1 statistics (the update ops never ran);
* drifted layers byte-identical to ``--against`` (e.g. the pretrained checkpoint fine-tuning started from);
* a cause found in the training graph (:mod:`ckptfix.diagnostics.cause`: the train op never runs the update ops);
* **what a repair would change on this data** (:func:`far_from_training_mode`): recalibrating flips at least
  :data:`FAR_CHANGED` of the model's decisions (top-1 classes, sigmoid decisions, per frame and per output,
  :mod:`ckptfix.diagnostics.agreement`), and the flips bring inference mode toward training mode (a paired
  sign test: ``gained - lost > max(2, 2 * sqrt(gained + lost))``); for a regression output, the relative error
  against training mode is at least :data:`FAR_RELATIVE_ERROR` and the repair at least halves it. A checkpoint
  whose inference mode disagrees with its own training mode on that much of the user's data is broken for
  that data, whatever the history of its statistics. A large relative error alone is not evidence for an
  output that decides: a domain shift that rescales the inputs raises it while every decision still agrees.

Thresholds, from the decision catalogue (docs/decisions.md): healthy models on their own data or a benign shift
change at most a few percent of their decisions under recalibration; stale ones, from 0/1 or from an earlier
domain, a third to nine tenths.
"""

from __future__ import annotations

import math
from typing import Sequence

#: share of decisions a repair flips (toward training mode) that shows inference mode is broken on this data
FAR_CHANGED = 0.1
#: relative output error of a regression output that, halved or better by the repair, shows the same
FAR_RELATIVE_ERROR = 0.5


def far_from_training_mode(agreement) -> str | None:
    """The evidence line when the repair would change much of what the model computes on this data (module
    docstring), output by output; None otherwise."""
    if agreement is None:
        return None
    for one in agreement.outputs or (agreement,):
        where = f" of {one.output_tensor}" if agreement.outputs else ""
        if one.decides:
            lost, gained = one.top1_lost, one.top1_gained
            if one.changed >= FAR_CHANGED and gained - lost > max(2.0, 2.0 * math.sqrt(gained + lost)):
                return (f"recalibrating changes {one.changed:.0%} of the decisions{where} on this data: inference mode "
                        f"agrees with training mode on {one.top1_before:.0%} with the stored statistics, "
                        f"{one.top1_after:.0%} after")
        elif (one.relative_error_before >= FAR_RELATIVE_ERROR
              and one.relative_error_after <= one.relative_error_before / 2):
            return (f"inference mode is {one.relative_error_before:.3g} (relative error) from training mode{where} "
                    f"with the stored statistics, {one.relative_error_after:.3g} after recalibrating")
    return None


def staleness_evidence(initial: Sequence[str], same_as_against: Sequence[str], cause, agreement) -> list[str]:
    """The evidence found, one line each: ``initial`` and ``same_as_against`` name the drifted layers with
    initial statistics and with ``--against``'s; ``cause`` a :class:`~ckptfix.diagnostics.cause.Cause` or None;
    ``agreement`` an :class:`~ckptfix.diagnostics.agreement.Agreement` or None."""
    evidence = []
    if initial:
        evidence.append(f"{len(initial)} drifted layer(s) hold the initial 0/1 statistics ({initial[0]}...)")
    if same_as_against:
        evidence.append(f"{len(same_as_against)} drifted layer(s) are identical to --against ({same_as_against[0]}...)")
    if cause is not None and cause.found:
        evidence.append(cause.message.splitlines()[0])
    far = far_from_training_mode(agreement)
    if far:
        evidence.append(far)
    return evidence
