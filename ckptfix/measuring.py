"""The format-independent steps of a measuring pass, shared by the TF1 graph path (:mod:`ckptfix.api`) and the
Keras / TF2 path (:mod:`ckptfix.keras.commands`): choosing layers, vetting each batch's moments, the progress
bar, and turning a layer's pooled moments into its :class:`~ckptfix.report.LayerReport`.

A layer is anything with ``name``, ``kind``, ``bessel`` (its variance convention: Bessel-corrected
``M2 / (n - 1)`` or biased ``M2 / n``), ``mean_variable`` and ``variance_variable`` (keys into ``stored``).
"""

from __future__ import annotations

import re
import sys
from typing import Callable, Sequence, TypeVar

import numpy as np

from ckptfix.errors import CkptfixError, DataError, NoBatchNormError
from ckptfix.report import LayerReport
from ckptfix.stats import Estimator, PooledMoments

Layer = TypeVar("Layer")


def _compile(pattern: str | None, option: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise CkptfixError(f"{option} {pattern!r} is not a valid regular expression ({error}).") from None


def select_layers(layers: Sequence[Layer], include: str | None, exclude: str | None) -> list[Layer]:
    """Layers whose scope name matches ``include`` (re.search) and not ``exclude``."""
    included, excluded = _compile(include, "--include"), _compile(exclude, "--exclude")
    chosen = [
        layer for layer in layers
        if (included is None or included.search(layer.name)) and not (excluded and excluded.search(layer.name))
    ]
    if not chosen:
        names = ", ".join(layer.name for layer in layers[:6]) + (" ..." if len(layers) > 6 else "")
        raise NoBatchNormError(f"--include/--exclude select none of the {len(layers)} BN layers ({names}).")
    return chosen


def check_batch_moments(layer: str, moments, describe_batch: Callable[[], str]) -> None:
    """Refuse a batch whose moments would corrupt ``layer``'s statistics: non-finite, or one value per channel.

    With one value per channel (a single sample through a dense BN layer) the batch variance is 0 and BN
    outputs zeros, so this layer and every later one would be calibrated on garbage.
    """
    if not (np.isfinite(moments.mean).all() and np.isfinite(moments.m2).all()):
        raise DataError(
            f"BN layer {layer} got NaN or Inf statistics from {describe_batch()}: check those inputs "
            "(the inputs themselves are finite, so the model overflows on them)."
        )
    if moments.count == 1:
        raise DataError(
            f"BN layer {layer} sees a single value per channel in {describe_batch()}, so its batch variance "
            "would be 0: use --batch-size 2 or more and at least 2 samples."
        )


def progress_bar(enabled: bool, total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="sample", desc="calibrating", file=sys.stderr, leave=False)


def layer_report(layer, pooled: PooledMoments, stored, keys, estimator: str) -> LayerReport:
    """The layer's new statistics in its own variance convention, next to the stored ones."""
    mean, variance = pooled.mean_and_variance(Estimator(estimator), bessel=layer.bessel)
    if not (np.isfinite(mean).all() and np.isfinite(variance).all()):  # never write non-finite statistics
        raise DataError(f"BN layer {layer.name}: the pooled statistics are not finite (overflow?): nothing was written.")
    return LayerReport(
        name=layer.name,
        kind=layer.kind,
        channels=mean.size,
        mean_key=keys.get(layer.mean_variable, layer.mean_variable),
        variance_key=keys.get(layer.variance_variable, layer.variance_variable),
        variance_convention="bessel" if layer.bessel else "biased",
        count=pooled.count,
        old_mean=stored[layer.mean_variable],
        new_mean=mean,
        old_variance=stored[layer.variance_variable],
        new_variance=variance,
    )
