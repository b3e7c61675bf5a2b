"""Everything that differs between the TensorFlow versions ckptfix supports, in one place.

Supported: TensorFlow 2.15 to 2.21 (:data:`SUPPORTED`), the range ``pyproject.toml`` declares and CI tests
(docs/versions.md). What differs across it, and what the rest of the code asks here instead of checking a
version itself:

=====================  =========================================  =============================================
                       TensorFlow 2.15                            TensorFlow 2.16 to 2.21
=====================  =========================================  =============================================
Keras 2 (the code of   ``keras`` 2.15, which is ``tf.keras``       the ``tf_keras`` package (when installed;
``.h5`` / Keras 2      (``tf_keras`` 2.15 is a copy of it, which   TensorFlow's ``TF_USE_LEGACY_KERAS``); its
files, tf.keras        must not be imported beside it:            own saver and metadata under ``tf_keras.src``
models)                :func:`refuse_tf_keras_beside_keras2`)
Keras 3                none (a ``.keras`` file written by          ``keras``
                       Keras 3 cannot be read)
numpy                  1.x: TensorFlow 2.15 does not import with  1.26 and later, 2.x
                       numpy 2
tf-slim 1.1.0          its batch norm imports                     three names it uses are gone, and
                       ``tf_keras.legacy_tf_layers``: aliased to  ``tf_keras.legacy_tf_layers`` moved: aliases
                       Keras 2.15's (:func:`enable_tf_slim`)      (:func:`enable_tf_slim`)
=====================  =========================================  =============================================

A TensorFlow outside the range gets one line before any work (:func:`require_supported_tensorflow`): an older
one (or TensorFlow 2.15 with numpy 2) is refused; a newer one runs, with a warning that it is untested.
"""

from __future__ import annotations

import importlib
import importlib.util
import contextlib
import re
import sys
import warnings
from functools import lru_cache
from typing import Iterator

from ckptfix.errors import TensorFlowVersionError

#: the oldest and the newest supported TensorFlow (major, minor), both tested by CI
SUPPORTED = ((2, 15), (2, 21))
#: the requirement pyproject.toml declares, for messages
REQUIREMENT = "tensorflow>=2.15,<2.22"
RANGE = f"TensorFlow {SUPPORTED[0][0]}.{SUPPORTED[0][1]} to {SUPPORTED[1][0]}.{SUPPORTED[1][1]}"
#: distributions that install the ``tensorflow`` package under another name (their versions are TensorFlow's)
_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos",
                  "tensorflow-aarch64", "intel-tensorflow", "tf-nightly", "tf-nightly-cpu")


# ------------------------------------------------------------------------------------------- the range


class TensorFlowVersionWarning(UserWarning):
    """TensorFlow is newer than the tested range: ckptfix runs, untested (:func:`require_supported_tensorflow`)."""


def minor_version(version: str) -> tuple[int, int]:
    """``"2.15.1"``, ``"2.16.0rc0"``, ``"2.22.0-dev20261201"`` -> ``(2, 15)``, ``(2, 16)``, ``(2, 22)``."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def check_versions(tensorflow: str, numpy: str) -> str | None:
    """Judge an environment's TensorFlow and numpy versions: raise :class:`TensorFlowVersionError` (one line,
    naming the range and the fix) for a TensorFlow older than the range, or TensorFlow 2.15 with numpy 2; return
    a one-line warning for a TensorFlow newer than the range (untested, run anyway); None inside it."""
    found = minor_version(tensorflow)
    if found < SUPPORTED[0]:
        raise TensorFlowVersionError(
            f"ckptfix supports {RANGE}; this environment has TensorFlow {tensorflow}: pip install '{REQUIREMENT}'.")
    if found < (2, 16) and minor_version(numpy) >= (2, 0):
        raise TensorFlowVersionError(
            f"TensorFlow {tensorflow} needs numpy < 2, and this environment has numpy {numpy}: pip install 'numpy<2' "
            f"(ckptfix supports {RANGE}).")
    if found > SUPPORTED[1]:
        return (f"TensorFlow {tensorflow} is newer than the versions ckptfix is tested on ({RANGE}): it runs, "
                f"untested; pip install '{REQUIREMENT}' for a tested one.")
    return None


def _installed_version() -> str | None:
    """TensorFlow's version from its distribution's metadata (no import), or None."""
    from importlib import metadata

    for name in _DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def require_supported_tensorflow() -> None:
    """Check this environment's TensorFlow before any work (the CLI's commands and every API call): raise
    :class:`TensorFlowVersionError` outside the range (:func:`check_versions`), or when TensorFlow is missing or
    fails to import; warn (:class:`TensorFlowVersionWarning`, once per process) for a newer TensorFlow."""
    warning = _checked()
    if warning is not None and not _warned:
        _warned.append(warning)
        warnings.warn(warning, TensorFlowVersionWarning, stacklevel=3)


_warned: list[str] = []


@lru_cache(maxsize=None)
def _checked() -> str | None:
    """:func:`require_supported_tensorflow`'s check, once per process: the warning for a newer TensorFlow, or None.

    numpy 2 under TensorFlow 2.15 is caught from the metadata before TensorFlow is imported: that import would
    print numpy's page-long compatibility report before failing."""
    import numpy as np

    if minor_version(np.__version__) >= (2, 0) and "tensorflow" not in sys.modules:
        installed = _installed_version()
        if installed is not None:
            check_versions(installed, np.__version__)
    if importlib.util.find_spec("tensorflow") is None:
        raise TensorFlowVersionError(f"ckptfix needs {RANGE}, and none is installed: pip install '{REQUIREMENT}'.")
    try:
        import tensorflow as tf
    except Exception as error:  # a broken install: ImportError, or whatever its native code raised
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1][:200]
        raise TensorFlowVersionError(
            f"TensorFlow does not import here ({reason}): ckptfix needs {RANGE}, pip install '{REQUIREMENT}'."
        ) from None
    return check_versions(tf.__version__, np.__version__)


def tensorflow_minor() -> tuple[int, int]:
    import tensorflow as tf

    return minor_version(tf.__version__)


# ------------------------------------------------------------------------------------------------ Keras


def has_keras3() -> bool:
    """Whether ``keras`` is Keras 3 (TensorFlow 2.16 and later)."""
    return tensorflow_minor() >= (2, 16)


@lru_cache(maxsize=None)
def keras2_name() -> str | None:
    """The module that runs Keras 2 code and files: ``keras`` on TensorFlow 2.15 (``tf.keras``), ``tf_keras``
    later (None when it is not installed)."""
    if not has_keras3():
        return "keras"
    return "tf_keras" if importlib.util.find_spec("tf_keras") is not None else None


def keras2():
    """The Keras 2 module (:func:`keras2_name`); call only when it exists."""
    return importlib.import_module(keras2_name())


def keras2_label() -> str:
    """How messages name the Keras 2 loader: ``tf_keras``, or ``tf.keras`` on TensorFlow 2.15."""
    return "tf_keras" if keras2_name() == "tf_keras" else "tf.keras"


def keras2_module(path: str):
    """A module of the Keras 2 implementation by its path under the package's ``src`` (``saving.saving_lib``,
    ``engine.base_layer``): ``tf_keras.src.<path>`` or, on TensorFlow 2.15, ``keras.src.<path>``."""
    return importlib.import_module(f"{keras2_name()}.src.{path}")


def keras2_saved_metadata():
    """The ``SavedMetadata`` proto of Keras 2 SavedModels (``keras_metadata.pb``)."""
    return importlib.import_module(f"{keras2_name()}.protobuf.saved_metadata_pb2").SavedMetadata


def _keras_modules() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Module prefixes of (Keras 2, Keras 3) classes."""
    if has_keras3():
        return ("tf_keras.",), ("keras.",)
    return ("keras.",), ()


def is_keras2_class(cls) -> bool:
    """Whether ``cls`` is defined by Keras 2 (tf_keras; on TensorFlow 2.15 ``keras`` / ``tf.keras`` too)."""
    return cls.__module__.startswith(_keras_modules()[0])


def is_keras3_class(cls) -> bool:
    """Whether ``cls`` is defined by Keras 3 (``keras`` on TensorFlow 2.16 and later)."""
    keras3 = _keras_modules()[1]
    return bool(keras3) and cls.__module__.startswith(keras3)


def refuse_tf_keras_beside_keras2() -> None:
    """On TensorFlow 2.15, refuse to load a Keras model file once the ``tf_keras`` package is imported in this process
    (by ``--import``, ``--model``, the caller, or TensorFlow itself: with tf-keras installed, 2.15's
    ``tf.saved_model.load`` imports it): tf-keras 2.15 is a second copy of Keras 2.15 whose import breaks ``keras``'
    own loader (its functional-model reconstruction never finishes; checked with tf-keras 2.15.1)."""
    if not has_keras3() and "tf_keras" in sys.modules:
        from ckptfix.errors import CkptfixError

        raise CkptfixError(
            "tf_keras is imported in this process: on TensorFlow 2.15 Keras 2 is tf.keras itself, and tf_keras beside "
            "it breaks Keras' model loading: pip uninstall tf-keras (TensorFlow 2.15 does not need it) and define "
            "layers and models with tf.keras (import keras), or use TensorFlow 2.16 or later for tf_keras.")


@contextlib.contextmanager
def keras_v2_behavior() -> Iterator[None]:
    """TensorFlow's v2 switch on while a Keras model is deserialised, as it was before: Keras 2 (tf.keras on
    TensorFlow 2.15, tf_keras) picks the layer classes it can deserialise by that switch, and in a TF1-style process
    (``tf.compat.v1.disable_v2_behavior()``) it knows no ``Functional`` model ("Unknown layer: Functional")."""
    from tensorflow.python import tf2

    if tf2.enabled():
        yield
        return
    tf2.enable()
    try:
        yield
    finally:
        tf2.disable()


def is_keras2_object(obj) -> bool:
    return is_keras2_class(type(obj))


def is_keras_class(cls) -> bool:
    return is_keras2_class(cls) or is_keras3_class(cls)


# ----------------------------------------------------------------------------------------------- tf-slim

_LEGACY_LAYERS = ("base", "convolutional", "core", "normalization", "pooling")


def enable_tf_slim() -> None:
    """Let tf-slim 1.1.0 networks build on every supported TensorFlow (``--model`` functions written with
    tf-slim). Its last release predates three removals; each is bridged with an alias that only adds a missing
    name (nothing that exists is replaced), looked up when slim's layers run (idempotent):

    1. ``tensorflow.python.framework.ops.Tensor`` (TensorFlow 2.16+: ``tf.Tensor``):
       ``tf_slim.layers.utils.constant_value`` checks every ``is_training`` argument with it.
    2. ``tensorflow.python.ops.control_flow_ops.cond`` (2.16+; ``tf.compat.v1.cond`` is the same function):
       ``smart_cond`` calls it when ``is_training`` is a tensor.
    3. ``tf_keras.legacy_tf_layers.*``: slim's default batch-norm path builds the legacy ``tf.layers``
       BatchNormalization, which TensorFlow (2.15 too) imports lazily from there; the Keras 2 packages ship those
       modules under ``src``: ``tf_keras.src.legacy_tf_layers`` (2.16+), and on TensorFlow 2.15 Keras 2.15's own
       ``keras.src.legacy_tf_layers`` (so tf-keras is neither needed nor imported there). Skipped without Keras 2.
    """
    import tensorflow as tf
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import control_flow_ops

    if not hasattr(ops, "Tensor"):
        ops.Tensor = tf.Tensor
    if not hasattr(control_flow_ops, "cond"):
        control_flow_ops.cond = tf.compat.v1.cond
    if "tf_keras.legacy_tf_layers" in sys.modules or keras2_name() is None:
        return
    source = f"{keras2_name()}.src.legacy_tf_layers"
    try:
        legacy = importlib.import_module(source)
    except ImportError:
        return
    sys.modules["tf_keras.legacy_tf_layers"] = legacy
    for name in _LEGACY_LAYERS:
        sys.modules[f"tf_keras.legacy_tf_layers.{name}"] = importlib.import_module(f"{source}.{name}")
