"""Output agreement: does inference mode reproduce what the model computes on batch statistics?

On the same calibration batches, the model's output ``y_batch`` (BN on batch statistics, the behaviour the
weights were trained for) is compared with its inference-mode output ``y_inf`` (BN on moving statistics),
once with the stored statistics and once with the recomputed ones:

* top-1 agreement: the fraction of compared units with ``argmax y_inf == argmax y_batch`` over the last axis.
  A unit is a sample for an output of shape ``(N, K)`` (or ``(N, 1, 1, K)``); a frame (time step) for a
  sequence output ``(N, T, K)``, so ``N * T`` units; a position for higher ranks (``N * H * W`` units);
* relative error: ``||y_inf - y_batch|| / ||y_batch||`` (Frobenius norms over all samples).

A model with several outputs (a Keras model's heads) is compared output by output; the combined figures are
those of the worst output (lowest top-1 agreement, largest relative error, each taken on its own), so a
broken head is never averaged away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """Agreement of inference-mode outputs with batch-statistics outputs, before and after recalibration.

    ``unit`` is what top-1 counts (``sample``, ``frame`` or ``position``; ``mixed`` across outputs of different
    shapes) and ``num_compared`` how many (per output; None when mixed);
    ``outputs`` holds one Agreement per output when the model has several (then the figures here are the
    worst output's and ``output_tensor`` names them all, comma-joined)."""

    output_tensor: str
    num_samples: int
    top1_before: float
    top1_after: float
    relative_error_before: float
    relative_error_after: float
    #: samples (or frames) whose top-1 agreed with the stored statistics and not with the new ones, and conversely
    top1_lost: int = 0
    top1_gained: int = 0
    unit: str = "sample"
    num_compared: int | None = None
    outputs: tuple["Agreement", ...] = ()

    def _units(self) -> str:
        compared = self.num_samples if self.num_compared is None else self.num_compared
        if self.unit in ("sample", "mixed"):
            return f"{compared:,} samples"
        return f"{compared:,} {self.unit}s ({self.num_samples:,} samples)"

    def summary(self) -> str:
        if not self.outputs:
            return (
                f"inference mode agrees with training mode on {self.top1_before:.0%} of {self._units()} of "
                f"{self.output_tensor} with the stored statistics; {self.top1_after:.0%} after recalibration "
                f"(relative output error {self.relative_error_before:.3g} -> {self.relative_error_after:.3g})"
            )
        same = self.unit != "mixed"  # every output counts the same units: said once
        each = "; ".join(
            f"{one.output_tensor} {one.top1_before:.0%} -> {one.top1_after:.0%}{'' if same else ' of ' + one._units()} "
            f"(relative error {one.relative_error_before:.3g} -> {one.relative_error_after:.3g})" for one in self.outputs
        )
        return (f"inference mode agrees with training mode on {self._units() + ' of ' if same else ''}each of "
                f"{len(self.outputs)} outputs, with the stored -> recalibrated statistics: {each}")

    def to_dict(self) -> dict:
        return {
            "output_tensor": self.output_tensor,
            "num_samples": self.num_samples,
            "top1_before": self.top1_before,
            "top1_after": self.top1_after,
            "relative_error_before": self.relative_error_before,
            "relative_error_after": self.relative_error_after,
            "top1_lost": self.top1_lost,
            "top1_gained": self.top1_gained,
            "unit": self.unit,
            "num_compared": self.num_compared,
            "outputs": [one.to_dict() for one in self.outputs],
        }


def top1_agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(_agrees(outputs, reference)))


def _agrees(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.argmax(outputs, axis=-1) == np.argmax(reference, axis=-1)


def relative_error(outputs: np.ndarray, reference: np.ndarray) -> float:
    reference = np.asarray(reference, np.float64)
    return float(np.linalg.norm(np.asarray(outputs, np.float64) - reference) / max(np.linalg.norm(reference), 1e-12))


def concatenate(parts: list):
    """Batches of outputs joined along the samples: arrays, or dicts of arrays (one per output)."""
    if parts and isinstance(parts[0], dict):
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    return np.concatenate(parts)


def _unit(shape: tuple[int, ...]) -> tuple[str, int]:
    """What top-1 counts for an output of ``shape`` and how many there are (see the module docstring)."""
    per_sample = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
    if per_sample == 1:
        return "sample", shape[0]
    return ("frame" if len(shape) == 3 else "position"), shape[0] * per_sample


def compare(output_tensor: str, batch_outputs, before, after) -> Agreement:
    """Agreement figures from the three outputs of the same samples: arrays, or dicts ``{output name: array}``
    for a model with several outputs (one output in the dict is compared as that output alone)."""
    if isinstance(batch_outputs, dict):
        each = tuple(compare(name, batch_outputs[name], before[name], after[name]) for name in batch_outputs)
        if len(each) == 1:
            return each[0]
        same = len({(one.unit, one.num_compared) for one in each}) == 1  # heads of one shape: the same units
        return Agreement(
            output_tensor=",".join(one.output_tensor for one in each),
            num_samples=each[0].num_samples,
            top1_before=min(one.top1_before for one in each),
            top1_after=min(one.top1_after for one in each),
            relative_error_before=max(one.relative_error_before for one in each),
            relative_error_after=max(one.relative_error_after for one in each),
            unit=each[0].unit if same else "mixed",
            num_compared=each[0].num_compared if same else None,
            outputs=each,
            top1_lost=sum(one.top1_lost for one in each),
            top1_gained=sum(one.top1_gained for one in each),
        )
    batch_outputs = np.asarray(batch_outputs)
    unit, compared = _unit(batch_outputs.shape)
    agreed_before, agreed_after = _agrees(before, batch_outputs), _agrees(after, batch_outputs)
    return Agreement(
        output_tensor=output_tensor,
        num_samples=len(batch_outputs),
        top1_before=top1_agreement(before, batch_outputs),
        top1_after=top1_agreement(after, batch_outputs),
        relative_error_before=relative_error(before, batch_outputs),
        relative_error_after=relative_error(after, batch_outputs),
        top1_lost=int(np.sum(agreed_before & ~agreed_after)),
        top1_gained=int(np.sum(~agreed_before & agreed_after)),
        unit=unit,
        num_compared=compared,
    )
