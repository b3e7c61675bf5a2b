"""Evidence that drifted statistics are stale (a training bug), not merely from other data.

Drift alone cannot tell a training bug from a domain shift: a healthy model's statistics drift on data from
another distribution too. ``diagnose`` says *stale* only with evidence of one of:

* drifted layers still holding the initial 0 / 1 statistics (the update ops never ran);
* drifted layers byte-identical to ``--against`` (e.g. the pretrained checkpoint fine-tuning started from);
* a cause found in the training graph (:mod:`ckptfix.diagnostics.cause`: the train op never runs the update ops);
* inference mode far from training mode on the calibration data: top-1 agreement with the stored statistics
  below :data:`FAR_TOP1`. A large relative output error alone is not evidence: a domain shift that rescales
  the inputs raises it while every decision still agrees.
"""

from __future__ import annotations

from typing import Sequence

FAR_TOP1 = 0.5


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
    if agreement is not None and agreement.top1_before < FAR_TOP1:
        evidence.append(f"inference mode with the stored statistics agrees with training mode on only "
                        f"{agreement.top1_before:.0%} of the samples (relative output error "
                        f"{agreement.relative_error_before:.3g})")
    return evidence
