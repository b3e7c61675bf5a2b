"""Calibration data preprocessed unlike the training data, as the model's first BN layer sees it.

The agreement check cannot see a preprocessing mistake (both BN modes see the same wrongly scaled inputs,
and batch statistics normalise the scale away), but the first BN layer (network order) can, when it holds
statistics of the training data (not the initial 0 / 1). Per channel ``c``, with ``ε`` the layer's epsilon:

* mean shift on the stored scale: ``z_c = (new_mean_c - stored_mean_c) / sqrt(stored_var_c + ε)``;
* log variance ratio: ``r_c = ln((new_var_c + ε) / (stored_var_c + ε))``.

A mismatch is found when ``sqrt(mean_c z_c²) > MEAN_SIGMAS`` or ``|mean_c r_c| > LOG_VARIANCE`` (new
variances off by more than ×3 on average, in one direction); for images that went through a preset, when
nothing independent of the data (a cause found in the training graph) says the stored statistics are from
other data, already when ``sqrt(mean_c z_c²) > IMAGE_MEAN_SIGMAS``. Staleness moves a first layer little: it
sees the data directly, through fixed weights; a wrong input scale moves its variance by the square of the
scale error (``ln 4 = 1.39`` for [-1, 1] data into a model trained on [0, 1], ``2 ln 127.5 = 9.7`` for 0..255
pixels into a model trained on [-1, 1]) and a wrong offset moves its mean by many standard deviations. A
convolution's zero padding does not follow the offset, so on small images an offset-and-scale error (``unit``
data into an ``inception`` model) shows in the mean more than in the variance (measured on 16x16 and 32x32
images: mean shift 1.75 and 2.3 stored σ, log variance ratio -0.15 and 0.2; the same model on its own
preprocessing: 0.11 σ). Statistics left from pretraining on another domain
move the first layer too (5.3 σ on the tests' pretrained slim model): a cause in the training graph explains
them, and ``--force`` writes them where none is found. The pipeline makes a finding on images a reason of the
repair gate, and one on arrays (preprocessed by their owner: a domain shift looks the same) a notice.

Every preset is affine in the pixels with one scale ``a`` (:data:`SCALES`; ``torch``'s three are close to
their geometric mean), so the first layer's input scales by ``a_trained / a_chosen`` and its variance by the
square: the presets ``P`` whose predicted ``2 ln(a_P / a_chosen)`` is within :data:`FIT_TOLERANCE` of the
observed ``-median_c ln(new_var_c / stored_var_c)`` (no epsilon: it would hide the small variances of inputs
in [-1, 1] or [0, 1]) are named, closest first, as the ones that would fit. The tolerance is wide because a
convolution's zero padding does not follow the preset's offset: on a bright image the borders change the
first layer's variance beyond the square of the scale (measured: ``ln`` ratio 11.25 for ``raw`` against
``inception``'s 9.69), and presets of the same scale with other offsets cannot be told apart at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MEAN_SIGMAS = 10.0
IMAGE_MEAN_SIGMAS = 1.5
LOG_VARIANCE = math.log(3.0)
FIT_TOLERANCE = 1.6
#: the scale each preset gives a 0..255 pixel (``torch``: 1 / (255 x the geometric mean of its stds))
SCALES = {"inception": 1 / 127.5, "vgg": 1.0, "caffe": 1.0, "torch": 1 / (255 * (0.229 * 0.224 * 0.225) ** (1 / 3)),
          "unit": 1 / 255, "raw": 1.0}


@dataclass(frozen=True)
class Mismatch:
    """The first layer's finding: its shift and log variance ratio (signed mean), the presets that would fit."""

    layer: str
    mean_shift: float
    log_variance_ratio: float
    fits: tuple[str, ...]

    @property
    def message(self) -> str:
        how = (f"a mean {self.mean_shift:.2g} stored standard deviations from the stored one and variances "
               f"{math.exp(abs(self.log_variance_ratio)):.2g}x {'above' if self.log_variance_ratio > 0 else 'below'} "
               "the stored ones")
        fit = f"; the stored scale fits {' or '.join(f'--preprocess {name}' for name in self.fits)}" if self.fits else ""
        return (f"the first BN layer {self.layer} sees {how} (over channels): the calibration data is likely "
                f"preprocessed unlike the training data; check --preprocess (or the arrays' scale){fit} "
                "(--force if the stored statistics are from other data)")


def first_layer_mismatch(report, chosen: str | None, explained: bool = False) -> Mismatch | None:
    """The :class:`Mismatch` of the first layer's ``report`` (a :class:`~ckptfix.report.LayerReport`), or None;
    ``chosen``: the preset the images went through (None: arrays, or your function); ``explained``: a cause
    found in the training graph says the stored statistics never followed training."""
    old_mean, old_var = np.asarray(report.old_mean, np.float64), np.asarray(report.old_variance, np.float64)
    if np.all(old_mean == 0) and np.all(old_var == 1):
        return None
    new_mean, new_var = np.asarray(report.new_mean, np.float64), np.asarray(report.new_variance, np.float64)
    scale2 = np.maximum(old_var + report.epsilon, 1e-12)
    shift = float(np.sqrt(np.mean((new_mean - old_mean) ** 2 / scale2)))
    ratio = float(np.mean(np.log(np.maximum(new_var + report.epsilon, 1e-12) / scale2)))
    limit = IMAGE_MEAN_SIGMAS if chosen is not None and not explained else MEAN_SIGMAS
    if not (shift > limit or abs(ratio) > LOG_VARIANCE):
        return None
    live = (old_var > 0) & (new_var > 0)  # the input's scale, without epsilon (which hides small variances)
    scaled = float(np.median(np.log(new_var[live] / old_var[live]))) if live.any() else ratio
    return Mismatch(report.name, shift, ratio, fitting_presets(scaled, chosen))


def fitting_presets(log_variance_ratio: float, chosen: str | None) -> tuple[str, ...]:
    """The presets other than ``chosen`` whose scale explains ``log_variance_ratio`` (see the module docstring)."""
    if chosen not in SCALES:
        return ()
    misses = {name: abs(2 * math.log(scale / SCALES[chosen]) + log_variance_ratio) for name, scale in SCALES.items()
              if scale != SCALES[chosen]}
    return tuple(sorted((name for name, miss in misses.items() if miss < FIT_TOLERANCE), key=misses.get))
