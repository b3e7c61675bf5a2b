"""The BatchNormalization layers of a Keras model, wherever they sit (nested models, subclassed attributes).

Both Keras 3 (``keras.layers.BatchNormalization``, including ``synchronized=True``) and Keras 2 (tf_keras, or
tf.keras on TensorFlow 2.15: ``BatchNormalization``, ``SyncBatchNormalization``) layers are found. Each layer's moving statistics are
written back in the convention of the layer's own moving-average update:

* Keras 3: the biased batch variance ``M2 / n`` (``ops.moments``), always;
* Keras 2: ``M2 / (n - 1)`` (Bessel-corrected) when the layer runs the fused kernel (``layer.fused``:
  4-D/5-D input, channel axis first or last, no renorm / virtual batch / adjustment), else ``M2 / n``;
* a Keras 2-era ``.h5`` loaded into Keras 3: the tf_keras rule applied to the layer's saved config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptfix import compat

_BATCHNORM_CLASSES = {"BatchNormalization", "BatchNormalizationBase", "SyncBatchNormalization"}


@dataclass(eq=False)
class KerasBatchNorm:
    """One BN layer: its path in the model (``outer/inner/bn``), the layer object and its variance convention."""

    name: str
    layer: object
    bessel: bool

    @property
    def kind(self) -> str:
        """``fused`` (tf_keras' fused kernel, Bessel-corrected moving variance) or ``non-fused``, as for TF1."""
        return "fused" if self.bessel else "non-fused"

    @property
    def channel_axes(self) -> list[int]:
        axis = self.layer.axis
        return list(axis) if isinstance(axis, (list, tuple)) else [int(axis)]

    @property
    def virtual_batch_size(self) -> int | None:
        """Ghost batch norm's group size (tf_keras ``virtual_batch_size``; Keras 3 has no such argument): in training
        the layer reshapes its input to ``[V, -1, ...]`` and its ``axis`` counts the inserted group axis."""
        virtual = getattr(self.layer, "virtual_batch_size", None) if compat.is_keras2_object(self.layer) else None
        return int(virtual) if virtual else None

    @property
    def channels(self) -> int:
        return int(np.prod(self.layer.moving_mean.shape))

    @property
    def mean_variable(self):
        return self.layer.moving_mean

    @property
    def variance_variable(self):
        return self.layer.moving_variance


def is_batchnorm(layer) -> bool:
    return any(cls.__name__ in _BATCHNORM_CLASSES and compat.is_keras_class(cls) for cls in type(layer).__mro__)


def _children(layer) -> list:
    if not hasattr(layer, "_flatten_layers"):
        return []
    return list(layer._flatten_layers(include_self=False, recursive=False))


def walk_layers(model) -> list[tuple[str, object]]:
    """Every layer under ``model`` once, depth first, with its path of layer names (``backbone/bn1``)."""
    seen, found = {id(model)}, []

    def visit(layer, prefix: str) -> None:
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            found.append((path, child))
            visit(child, path + "/")

    visit(model, "")
    return found


def find_batchnorm_layers(model, legacy_bessel: dict[str, bool] | None = None) -> list[KerasBatchNorm]:
    """The BN layers of ``model`` in model order.

    ``legacy_bessel`` maps layer names to the convention a Keras 2-era file's config implies (see the module
    docstring); for Keras 2 layers ``layer.fused`` decides, for Keras 3 layers the variance is biased.
    """
    layers = []
    for path, layer in walk_layers(model):
        if not is_batchnorm(layer):
            continue
        if compat.is_keras2_object(layer):
            bessel = bool(getattr(layer, "fused", False))
        else:
            bessel = bool((legacy_bessel or {}).get(layer.name, False))
        layers.append(KerasBatchNorm(name=path, layer=layer, bessel=bessel))
    return layers


def legacy_fused(layer_config: dict, input_rank: int | None) -> bool:
    """Whether tf.keras 2.x ran this saved BN layer with the fused kernel (Bessel-corrected moving variance)."""
    if layer_config.get("fused") is False or layer_config.get("renorm") or input_rank not in (4, 5):
        return False
    if layer_config.get("virtual_batch_size") is not None or layer_config.get("adjustment") is not None:
        return False
    axis = layer_config.get("axis", -1)
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] % input_rank in (1, input_rank - 1)
