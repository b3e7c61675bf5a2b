"""Which preprocessing a model's images take: read from the model where it is written down, else asked for.

Each model source answers one question, what its model says about its input (a :class:`Convention`, or
None): Keras models from their first layers and their names (:mod:`ckptfix.keras.conventions`), TF1 graphs
and SavedModels from the scopes of their BN layers (:func:`slim_convention`). :func:`choose` is the one
place the preprocessing of a run is decided, in this order:

1. ``preprocess`` given (``--preprocess``): used as given.
2. An input of an integer dtype (a ``uint8`` serving signature): ``raw``, the pixels as they are.
3. What the model says: ``Rescaling`` / ``Normalization`` first layers -> ``raw`` (``unit`` for a
   ``Normalization`` adapted on values in [0, 1]); a Keras Applications model by its name -> its
   ``preprocess_input`` mode (:data:`KERAS_APPLICATIONS`); a tf-slim network by its scope -> tf-slim's
   ``preprocessing_factory`` choice (:data:`SLIM_NETWORKS`); another tf-slim network (BN scopes
   ``.../BatchNorm``) -> ``inception``, the factory's choice for most of its networks.
4. Nothing: no preprocessing; images (files, encoded records, integer arrays of pixels) then stop the run
   before any batch (:class:`~ckptfix.errors.PreprocessingUnknown`, exit 2). Float arrays, float TFRecord
   features and Python batches of floats never need one (taken as preprocessed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ckptfix.data.spec import InputSpec


@dataclass(frozen=True)
class Convention:
    """What a model says about its input: the preset that fits it and why (``reason`` completes "because ...")."""

    preset: str
    reason: str


#: Keras Applications model names (``model.name``) -> the preset of their ``preprocess_input`` mode
#: (``tf``: x / 127.5 - 1 -> ``inception``; ``caffe``; ``torch``; none: the model scales its own pixels -> ``raw``)
KERAS_APPLICATIONS: tuple[tuple[str, str, str], ...] = (
    (r"resnet(50|101|152)|vgg(16|19)", "caffe", "caffe"),
    (r"densenet(121|169|201)", "torch", "torch"),
    (r"resnet(50|101|152)v2|inception_v3|inception_resnet_v2|xception|mobilenet_\d\.\d\d_\d+"
     r"|mobilenetv2_\d\.\d\d_\d+|nasnet_(large|mobile)", "tf", "inception"),
    (r"efficientnetb\d|efficientnetv2-(b\d|s|m|l)|convnext_(tiny|small|base|large|xlarge)|mobilenetv3(small|large)",
     "none (the model rescales its pixels)", "raw"),
)

#: tf-slim network scopes -> the preset of tf-slim's ``preprocessing_factory`` for that network (its map sends
#: the inception, mobilenet and nasnet networks to Inception preprocessing, resnet_v1/v2 and vgg to VGG's)
SLIM_NETWORKS: tuple[tuple[str, str], ...] = (
    (r"InceptionV[1-4]|InceptionResnetV2|MobilenetV[1-3]|MobilenetEdgeTPU|nasnet_(mobile|large)|pnasnet_(mobile|large)",
     "inception"),
    (r"resnet_v[12]_(50|101|152|200)|vgg_(a|16|19)", "vgg"),
)


def keras_application(name: str) -> Convention | None:
    """The convention of the Keras Applications model named ``name`` (None: not one of them)."""
    for pattern, mode, preset in KERAS_APPLICATIONS:
        if re.fullmatch(pattern, name, re.IGNORECASE):
            return Convention(preset, f"it is the Keras Applications model {name} (preprocess_input mode {mode})")
    return None


def slim_convention(layer_names: Sequence[str]) -> Convention | None:
    """What BN layer scope names say: a tf-slim network of ``preprocessing_factory`` (by its scope), another
    tf-slim network (``.../BatchNorm`` scopes: slim's default, ``inception``), or nothing (None)."""
    for name in layer_names:
        for part in name.split("/"):
            for pattern, preset in SLIM_NETWORKS:
                if re.fullmatch(pattern, part):
                    return Convention(preset, f"it is the tf-slim network {part}, which tf-slim's preprocessing_factory "
                                              f"preprocesses with {preset}")
    if any(name == "BatchNorm" or name.endswith("/BatchNorm") for name in layer_names):
        return Convention("inception", "its BN layers are scoped as slim.batch_norm's (.../BatchNorm) in no network "
                                       "tf-slim's preprocessing_factory names, and the factory preprocesses most of "
                                       "its networks with inception")
    return None


@dataclass(frozen=True)
class Choice:
    """The preprocessing of a run: ``preprocess`` (a preset name, ``module:function``, a callable, or None: none
    chosen), ``read``: what the model said when it chose (None: given), ``other``: what the model suggests
    when the given preset differs."""

    preprocess: str | Callable | None
    read: Convention | None = None
    other: Convention | None = None

    @property
    def preset(self) -> str | None:
        """The preset name (None: your function, or nothing chosen)."""
        return self.preprocess if isinstance(self.preprocess, str) and ":" not in self.preprocess else None

    def describe(self, formula: str, integer_images: bool) -> str:
        """The one notice of the choice: what went through which preprocessing (``formula``), and why."""
        what = "integer arrays taken as 0..255 images," if integer_images else "images"
        name = getattr(self.preprocess, "__qualname__", self.preprocess)
        as_given = " (--preprocess raw uses them as given)" if integer_images and name != "raw" else ""
        if self.read is not None:
            return (f"{what} preprocessed with {name}: {formula}{as_given}; chosen because {self.read.reason} "
                    "(--preprocess sets another)")
        told = f"; the model suggests {self.other.preset} because {self.other.reason}" if self.other else ""
        return f"{what} preprocessed with --preprocess {name}: {formula}{as_given}{told}"


def choose(given, said: Convention | None, inputs: Sequence[InputSpec]) -> Choice:
    """The run's preprocessing from ``given`` (the option, None when not set), what the model ``said`` and its
    ``inputs``; see the module docstring for the order."""
    told = _told(said, inputs)
    if given is None:
        return Choice(None) if told is None else Choice(told.preset, read=told)
    given = getattr(given, "value", given)  # an options.Preset
    differs = told is not None and isinstance(given, str) and told.preset != given
    return Choice(given, other=told if differs else None)


def _told(said: Convention | None, inputs: Sequence[InputSpec]) -> Convention | None:
    """An integer image input's convention (``raw``), else what the model said."""
    integer = [spec for spec in inputs if spec.dtype is not None and np.issubdtype(spec.dtype, np.integer)
               and spec.shape is not None and len(spec.shape) == 4]
    if integer:
        return Convention("raw", f"the model input {integer[0].name} takes {integer[0].dtype} pixels")
    return said
