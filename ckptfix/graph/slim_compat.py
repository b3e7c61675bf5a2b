"""Let tf-slim 1.1.0 networks build under TensorFlow 2.21, for ``--model`` functions written with tf-slim.

tf-slim's last release predates three removals in TensorFlow / tf-keras; each is bridged with an alias that
only adds a missing name (nothing that exists is replaced), looked up when slim's layers run:

1. ``tensorflow.python.framework.ops.Tensor`` (now ``tf.Tensor``): ``tf_slim.layers.utils.constant_value``
   checks every ``is_training`` argument with it.
2. ``tensorflow.python.ops.control_flow_ops.cond`` (``tf.compat.v1.cond`` is the same function):
   ``smart_cond`` calls it when ``is_training`` is a tensor.
3. ``tf_keras.legacy_tf_layers.*``: slim's default batch-norm path builds the legacy ``tf.layers``
   BatchNormalization, which TensorFlow imports lazily from there; tf-keras 2.21 ships those modules as
   ``tf_keras.src.legacy_tf_layers.*``. Skipped when tf-keras is not installed.
"""

from __future__ import annotations

import importlib
import sys

_LEGACY_LAYERS = ("base", "convolutional", "core", "normalization", "pooling")


def enable_tf_slim() -> None:
    """Add the three aliases above where they are missing (idempotent)."""
    import tensorflow as tf
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import control_flow_ops

    if not hasattr(ops, "Tensor"):
        ops.Tensor = tf.Tensor
    if not hasattr(control_flow_ops, "cond"):
        control_flow_ops.cond = tf.compat.v1.cond
    if "tf_keras.legacy_tf_layers" in sys.modules:
        return
    try:
        legacy = importlib.import_module("tf_keras.src.legacy_tf_layers")
    except ImportError:
        return
    sys.modules["tf_keras.legacy_tf_layers"] = legacy
    for name in _LEGACY_LAYERS:
        sys.modules[f"tf_keras.legacy_tf_layers.{name}"] = importlib.import_module(f"tf_keras.src.legacy_tf_layers.{name}")
