"""Output agreement: does inference mode reproduce what the model computes on batch statistics?

On the same calibration samples, the model's output ``y_batch`` (BN on batch statistics, the behaviour the
weights were trained for) is compared with its inference-mode output ``y_inf`` (BN on moving statistics),
once with the stored statistics and once with the recomputed ones.

What a *decision* is depends on the output's **kind**, read from ``y_batch`` (last axis ``K``):

* ``classes``: ``K >= 2`` and not every value in [0, 1], or rows of probabilities summing to 1 (softmax): the
  decision is the top-1 class, ``argmax`` over the last axis;
* ``labels``: ``K >= 2``, every value in [0, 1] and rows not summing to 1 (independent sigmoids, multi-label):
  one decision per label, ``y > 0.5``;
* ``binary``: ``K == 1`` and every value in [0, 1] (one sigmoid): the decision ``y > 0.5``;
* ``regression``: ``K == 1`` with values outside [0, 1] (a score, a one-unit logit, a regression target):
  no decision is counted; the relative error alone judges it.

A decision is made per *unit*: a sample for an output ``(N, K)`` (or ``(N, 1, 1, K)``), a frame for a sequence
``(N, T, K)``, a position for higher ranks; ``labels`` outputs make ``K`` decisions per unit.

* decision agreement (``top1_*``, the name kept from the report's first version): the fraction of decisions of
  ``y_inf`` equal to those of ``y_batch`` (None for ``regression``);
* relative error: ``||y_inf - y_batch|| / ||y_batch||`` (Frobenius norms over all samples);
* ``changed``: the fraction of decisions the repair flips (stored vs recomputed statistics, both in inference
  mode) -- what recalibrating would change on this data; ``relative_change`` the same in norms,
  ``||y_after - y_before|| / ||y_before||``;
* ``unstable``: the fraction of the repaired decisions that flip when the recomputed statistics are moved
  within their standard errors (:func:`perturbed_statistics`): how much of the repair's outcome the data
  leaves to chance. None when not measured (one batch: no standard errors).

A model with several outputs (a Keras model's heads) is compared output by output; the combined figures are
those of the worst output (lowest agreement, largest error, change and instability, each taken on its own), so
a broken head is never averaged away.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

CLASSES, LABELS, BINARY, REGRESSION = "classes", "labels", "binary", "regression"
#: rows of probabilities sum to 1 within this (softmax outputs, float32)
_SUMS_TO_ONE = 1e-3


@dataclass(frozen=True)
class Agreement:
    """Agreement of inference-mode outputs with batch-statistics outputs, before and after recalibration.

    ``kind`` is what a decision is (module docstring; ``mixed`` across outputs of different kinds), ``unit`` what
    one is made for (``sample``, ``frame`` or ``position``; ``mixed`` across outputs of different shapes) and
    ``num_compared`` how many units were compared (per output; None when mixed; a ``labels`` output makes one
    decision per label of each unit);
    ``outputs`` holds one Agreement per output when the model has several (then the figures here are the
    worst output's and ``output_tensor`` names them all, comma-joined)."""

    output_tensor: str
    num_samples: int
    top1_before: float | None
    top1_after: float | None
    relative_error_before: float
    relative_error_after: float
    #: decisions that agreed with the stored statistics and not with the new ones, and conversely
    top1_lost: int = 0
    top1_gained: int = 0
    unit: str = "sample"
    num_compared: int | None = None
    outputs: tuple["Agreement", ...] = ()
    kind: str = CLASSES
    changed: float | None = None
    relative_change: float = 0.0
    unstable: float | None = None
    relative_instability: float | None = None

    @property
    def decides(self) -> bool:
        """Whether decisions were counted (every kind but ``regression``)."""
        return self.top1_before is not None

    @property
    def improvement(self) -> float:
        """How much the repair brings inference mode toward training mode: the gain in decision agreement, or
        for regression outputs the fall of the relative error."""
        if self.decides:
            return self.top1_after - self.top1_before
        return self.relative_error_before - self.relative_error_after

    def _units(self) -> str:
        compared = self.num_samples if self.num_compared is None else self.num_compared
        labels = "the labels of " if self.kind == LABELS else ""
        if self.unit in ("sample", "mixed"):
            return f"{labels}{compared:,} samples"
        return f"{labels}{compared:,} {self.unit}s ({self.num_samples:,} samples)"

    def _figures(self) -> str:
        decisions = "" if not self.decides else f"{self.top1_before:.0%} -> {self.top1_after:.0%} "
        return (f"{decisions}(relative error {self.relative_error_before:.3g} -> {self.relative_error_after:.3g})")

    def stability_summary(self) -> str | None:
        """``"repaired decisions stable to 0.4% under the statistics' uncertainty"``, or None (not measured)."""
        if self.unstable is not None:
            return f"repaired decisions stable to {self.unstable:.1%} under the statistics' uncertainty"
        if self.relative_instability is not None:
            return (f"repaired outputs stable to {self.relative_instability:.2g} (relative) under the statistics' "
                    "uncertainty")
        return None

    def summary(self) -> str:
        stability = self.stability_summary()
        tail = "" if stability is None else f"; {stability}"
        if not self.outputs:
            if not self.decides:
                return (f"inference mode vs training mode on {self.num_samples:,} samples of {self.output_tensor} "
                        f"(a regression output, judged by its relative error): {self.relative_error_before:.3g} with "
                        f"the stored statistics, {self.relative_error_after:.3g} after recalibration{tail}")
            what = {CLASSES: "", BINARY: " (decisions at 0.5)", LABELS: " (each label at 0.5)"}[self.kind]
            return (
                f"inference mode agrees with training mode on {self.top1_before:.0%} of {self._units()} of "
                f"{self.output_tensor}{what} with the stored statistics; {self.top1_after:.0%} after recalibration "
                f"(relative output error {self.relative_error_before:.3g} -> {self.relative_error_after:.3g}){tail}"
            )
        same = self.unit != "mixed" and self.kind != "mixed"  # every output counts the same units: said once
        each = "; ".join(f"{one.output_tensor} [{one.kind}] {one._figures()}"
                         f"{'' if same or not one.decides else ' of ' + one._units()}" for one in self.outputs)
        return (f"inference mode agrees with training mode on {self._units() + ' of ' if same else ''}each of "
                f"{len(self.outputs)} outputs, with the stored -> recalibrated statistics: {each}{tail}")

    def to_dict(self) -> dict:
        return {
            "output_tensor": self.output_tensor,
            "kind": self.kind,
            "num_samples": self.num_samples,
            "top1_before": self.top1_before,
            "top1_after": self.top1_after,
            "relative_error_before": self.relative_error_before,
            "relative_error_after": self.relative_error_after,
            "top1_lost": self.top1_lost,
            "top1_gained": self.top1_gained,
            "changed": self.changed,
            "relative_change": self.relative_change,
            "unstable": self.unstable,
            "relative_instability": self.relative_instability,
            "unit": self.unit,
            "num_compared": self.num_compared,
            "outputs": [one.to_dict() for one in self.outputs],
        }


def output_kind(reference: np.ndarray) -> str:
    """What a decision of this output is (see the module docstring), from its batch-statistics values."""
    values = np.asarray(reference, np.float64)
    probabilities = values.size > 0 and bool(np.all((values >= 0) & (values <= 1)))
    if values.shape[-1] == 1:
        return BINARY if probabilities else REGRESSION
    if not probabilities or np.all(np.abs(values.sum(axis=-1) - 1) < _SUMS_TO_ONE):
        return CLASSES
    return LABELS


def decisions(outputs: np.ndarray, kind: str) -> np.ndarray | None:
    """The decisions an output makes (see the module docstring); None for ``regression``."""
    outputs = np.asarray(outputs)
    if kind == CLASSES:
        return np.argmax(outputs, axis=-1)
    if kind in (LABELS, BINARY):
        return outputs > 0.5
    return None


def top1_agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=-1) == np.argmax(reference, axis=-1)))


def relative_error(outputs: np.ndarray, reference: np.ndarray) -> float:
    reference = np.asarray(reference, np.float64)
    return float(np.linalg.norm(np.asarray(outputs, np.float64) - reference) / max(np.linalg.norm(reference), 1e-12))


def concatenate(parts: list):
    """Batches of outputs joined along the samples: arrays, or dicts of arrays (one per output)."""
    if parts and isinstance(parts[0], dict):
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    return np.concatenate(parts)


def _unit(shape: tuple[int, ...]) -> tuple[str, int]:
    """What one decision is made for in an output of ``shape`` and how many there are (module docstring)."""
    per_sample = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
    if per_sample == 1:
        return "sample", shape[0]
    return ("frame" if len(shape) == 3 else "position"), shape[0] * per_sample


def _worst(each: tuple[Agreement, ...]) -> Agreement:
    """One Agreement for several outputs: each figure the worst output's (the module docstring)."""
    deciding = [one for one in each if one.decides]
    same_unit = len({(one.unit, one.num_compared) for one in each}) == 1
    worst = lambda values, pick: None if not values else pick(values)  # noqa: E731
    return Agreement(
        output_tensor=",".join(one.output_tensor for one in each),
        num_samples=each[0].num_samples,
        top1_before=worst([one.top1_before for one in deciding], min),
        top1_after=worst([one.top1_after for one in deciding], min),
        relative_error_before=max(one.relative_error_before for one in each),
        relative_error_after=max(one.relative_error_after for one in each),
        unit=each[0].unit if same_unit else "mixed",
        num_compared=each[0].num_compared if same_unit else None,
        outputs=each,
        top1_lost=sum(one.top1_lost for one in each),
        top1_gained=sum(one.top1_gained for one in each),
        kind=each[0].kind if len({one.kind for one in each}) == 1 else "mixed",
        changed=worst([one.changed for one in deciding], max),
        relative_change=max(one.relative_change for one in each),
    )


def compare(output_tensor: str, batch_outputs, before, after) -> Agreement:
    """Agreement figures from the three outputs of the same samples: arrays, or dicts ``{output name: array}``
    for a model with several outputs (one output in the dict is compared as that output alone)."""
    if isinstance(batch_outputs, dict):
        each = tuple(compare(name, batch_outputs[name], before[name], after[name]) for name in batch_outputs)
        return each[0] if len(each) == 1 else _worst(each)
    batch_outputs = np.asarray(batch_outputs)
    kind = output_kind(batch_outputs)
    unit, compared = _unit(batch_outputs.shape)
    figures = dict(
        output_tensor=output_tensor,
        num_samples=len(batch_outputs),
        relative_error_before=relative_error(before, batch_outputs),
        relative_error_after=relative_error(after, batch_outputs),
        relative_change=relative_error(after, before),
        unit=unit,
        kind=kind,
    )
    reference = decisions(batch_outputs, kind)
    if reference is None:
        return Agreement(top1_before=None, top1_after=None, num_compared=compared, **figures)
    decided_before, decided_after = decisions(before, kind), decisions(after, kind)
    agreed_before, agreed_after = decided_before == reference, decided_after == reference
    return Agreement(
        top1_before=float(np.mean(agreed_before)),
        top1_after=float(np.mean(agreed_after)),
        top1_lost=int(np.sum(agreed_before & ~agreed_after)),
        top1_gained=int(np.sum(~agreed_before & agreed_after)),
        changed=float(np.mean(decided_before != decided_after)),
        num_compared=compared,
        **figures,
    )


def with_stability(agreement: Agreement, after, perturbed) -> Agreement:
    """``agreement`` with its ``unstable`` / ``relative_instability`` figures: the repaired outputs ``after``
    against those with statistics perturbed within their standard errors (arrays, or dicts per output)."""
    if agreement.outputs:
        each = tuple(with_stability(one, after[one.output_tensor], perturbed[one.output_tensor])
                     for one in agreement.outputs)
        deciding = [one.unstable for one in each if one.unstable is not None]
        return replace(agreement, outputs=each, unstable=max(deciding) if deciding else None,
                       relative_instability=max(one.relative_instability for one in each))
    instability = relative_error(perturbed, after)
    if not agreement.decides:
        return replace(agreement, relative_instability=instability)
    flipped = decisions(perturbed, agreement.kind) != decisions(after, agreement.kind)
    return replace(agreement, unstable=float(np.mean(flipped)), relative_instability=instability)


def perturbed_statistics(mean, variance, epsilon: float, mean_errors, variance_errors, rng: np.random.Generator):
    """One draw of statistics within their standard errors: per channel ``mean + z1 * SE_mean * sqrt(var + eps)``
    and ``var + eps`` scaled by ``1 + z2 * SE_rel`` (floored at ``eps / 10``), ``z1, z2 ~ N(0, 1)``
    independent (units of :meth:`ckptfix.stats.PooledMoments.standard_errors`)."""
    mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
    scale2 = variance + epsilon
    z1, z2 = rng.standard_normal(mean.shape), rng.standard_normal(mean.shape)
    new_mean = mean + z1 * np.asarray(mean_errors) * np.sqrt(scale2)
    new_scale2 = np.maximum(scale2 * (1 + z2 * np.asarray(variance_errors)), epsilon / 10)
    return new_mean, np.maximum(new_scale2 - epsilon, 0.0)
