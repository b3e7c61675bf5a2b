"""Output agreement: does inference mode reproduce what the model computes on batch statistics?

On the same calibration batches, the model's output ``y_batch`` (BN on batch statistics, the behaviour the
weights were trained for) is compared with its inference-mode output ``y_inf`` (BN on moving statistics),
once with the stored statistics and once with the recomputed ones:

* top-1 agreement: the fraction of samples with ``argmax y_inf == argmax y_batch``;
* relative error: ``||y_inf - y_batch|| / ||y_batch||`` (Frobenius norms over all samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """Agreement of inference-mode outputs with batch-statistics outputs, before and after recalibration."""

    output_tensor: str
    num_samples: int
    top1_before: float
    top1_after: float
    relative_error_before: float
    relative_error_after: float
    #: samples (or frames) whose top-1 agreed with the stored statistics and not with the new ones, and conversely
    top1_lost: int = 0
    top1_gained: int = 0

    def summary(self) -> str:
        return (
            f"inference mode agrees with training mode on {self.top1_before:.0%} of {self.num_samples} samples "
            f"with the stored statistics; {self.top1_after:.0%} after recalibration "
            f"(relative output error {self.relative_error_before:.3g} -> {self.relative_error_after:.3g})"
        )

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
        }


def top1_agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(_agrees(outputs, reference)))


def _agrees(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.argmax(outputs, axis=-1) == np.argmax(reference, axis=-1)


def relative_error(outputs: np.ndarray, reference: np.ndarray) -> float:
    reference = np.asarray(reference, np.float64)
    return float(np.linalg.norm(np.asarray(outputs, np.float64) - reference) / max(np.linalg.norm(reference), 1e-12))


def compare(output_tensor: str, batch_outputs: np.ndarray, before: np.ndarray, after: np.ndarray) -> Agreement:
    """Agreement figures from the three output arrays of the same samples."""
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
    )
