"""What a Keras model says about its input's preprocessing (:mod:`ckptfix.data.conventions` decides).

Read, in order: the model's name when it is a Keras Applications model; else its first layer that changes
values (input, resizing, cropping and ``Random*`` augmentation layers -- inactive at inference -- skipped; a
nested model is read the same way):

* ``Rescaling``: the model scales its own pixels -> ``raw``;
* ``Normalization``: adapted on 0..255 pixels (some channel mean above :data:`PIXEL_MEAN`) -> ``raw``; on
  values in [0, 1] -> ``unit``; anything else says nothing;
* any other layer says nothing (None).

Keras 3 and tf_keras layers alike (by class name).
"""

from __future__ import annotations

import numpy as np

from ckptfix.data.conventions import Convention, keras_application

#: a Normalization whose adapted channel means exceed this was adapted on 0..255 pixels
PIXEL_MEAN = 1.5
_PASS_THROUGH = {"InputLayer", "Resizing", "CenterCrop", "Cropping2D", "Dropout", "GaussianNoise"}


def model_convention(model) -> Convention | None:
    """The :class:`Convention` ``model`` states (see the module docstring), or None."""
    named = keras_application(str(getattr(model, "name", "") or ""))
    if named is not None:
        return named
    if not getattr(model, "inputs", None):  # a subclassed model: its layers' order is not its call order
        return None
    for layer in getattr(model, "layers", []):
        kind = type(layer).__name__
        if kind in _PASS_THROUGH or kind.startswith("Random"):
            continue
        if kind == "Rescaling":
            return Convention("raw", f"its first layer {layer.name} (Rescaling, scale {_number(layer.scale)}, offset "
                                     f"{_number(layer.offset)}) scales the pixels itself")
        if kind == "Normalization":
            return _normalization(layer)
        if hasattr(layer, "layers"):
            return model_convention(layer)
        return None
    return None


def _normalization(layer) -> Convention | None:
    try:
        mean = np.asarray(layer.mean, np.float64).reshape(-1)
    except (TypeError, ValueError, AttributeError):
        return None
    if mean.size == 0 or not np.isfinite(mean).all():
        return None
    shown = ", ".join(f"{m:.3g}" for m in mean[:3])
    if mean.max() > PIXEL_MEAN:
        return Convention("raw", f"its first layer {layer.name} (Normalization, adapted mean {shown}) normalises "
                                 "0..255 pixels itself")
    if mean.min() >= 0.0 and mean.max() <= 1.0:
        return Convention("unit", f"its first layer {layer.name} (Normalization, adapted mean {shown}) normalises "
                                  "values in [0, 1]")
    return None


def _number(value) -> str:
    try:
        return f"{float(np.asarray(value).reshape(-1)[0]):.4g}"
    except (TypeError, ValueError, IndexError):
        return str(value)
