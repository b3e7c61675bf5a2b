"""Typed results of a recalibration, and their plain-text and JSON forms.

The API returns :class:`RecalibrationReport`; the CLI only prints it. Arrays are the per-channel values as
stored in the checkpoint before and after (converted to float64 for reporting).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LayerReport:
    """One BN layer: where its statistics live and how they changed.

    ``variance_convention`` is ``"bessel"`` (``M2 / (n - 1)``, fused TF1 BN) or ``"biased"`` (``M2 / n``,
    non-fused BN). ``count`` is the number of values pooled per channel (samples x spatial positions).
    """

    name: str
    kind: str
    channels: int
    mean_key: str
    variance_key: str
    variance_convention: str
    count: int
    old_mean: np.ndarray
    new_mean: np.ndarray
    old_variance: np.ndarray
    new_variance: np.ndarray

    @property
    def mean_change(self) -> float:
        """Relative change of the mean vector: ``||new - old|| / max(||new||, ||new_std||)``."""
        scale = max(np.linalg.norm(self.new_mean), np.linalg.norm(np.sqrt(self.new_variance)), 1e-12)
        return float(np.linalg.norm(self.new_mean - self.old_mean) / scale)

    @property
    def variance_change(self) -> float:
        """Relative change of the variance vector: ``||new - old|| / ||new||``."""
        scale = max(float(np.linalg.norm(self.new_variance)), 1e-12)
        return float(np.linalg.norm(self.new_variance - self.old_variance) / scale)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "channels": self.channels,
            "mean_key": self.mean_key,
            "variance_key": self.variance_key,
            "variance_convention": self.variance_convention,
            "count": self.count,
            "mean_change": self.mean_change,
            "variance_change": self.variance_change,
            "old_mean": self.old_mean.tolist(),
            "new_mean": self.new_mean.tolist(),
            "old_variance": self.old_variance.tolist(),
            "new_variance": self.new_variance.tolist(),
        }


@dataclass(frozen=True)
class RecalibrationReport:
    """What :func:`ckptfix.recalibrate` did: the layers changed, the data used, where the output is."""

    checkpoint: str
    output_checkpoint: str
    output_dir: str
    num_samples: int
    num_batches: int
    estimator: str
    input_tensor: str
    training_flag: str | None
    layers: list[LayerReport]
    untouched_layers: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "output_checkpoint": self.output_checkpoint,
            "output_dir": self.output_dir,
            "num_samples": self.num_samples,
            "num_batches": self.num_batches,
            "estimator": self.estimator,
            "input_tensor": self.input_tensor,
            "training_flag": self.training_flag,
            "layers": [layer.to_dict() for layer in self.layers],
            "untouched_layers": list(self.untouched_layers),
            "notices": list(self.notices),
        }

    def format_table(self) -> str:
        """The per-layer table the CLI prints: old -> new mean/variance summaries and relative change."""
        header = ("layer", "ch", "mean old -> new (avg)", "var old -> new (avg)", "Δmean", "Δvar")
        rows = [
            (
                layer.name,
                str(layer.channels),
                f"{layer.old_mean.mean():+.4g} -> {layer.new_mean.mean():+.4g}",
                f"{layer.old_variance.mean():.4g} -> {layer.new_variance.mean():.4g}",
                f"{layer.mean_change:.1%}",
                f"{layer.variance_change:.1%}",
            )
            for layer in self.layers
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)
