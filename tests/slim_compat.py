"""Make tf-slim 1.1.0 importable and runnable under TensorFlow 2.21.

Import this module before ``tf_slim``. tf-slim's last release predates three
removals in TensorFlow / tf-keras, each patched here with a one-line alias:

1. ``tensorflow.python.framework.ops.Tensor`` is gone (the class now lives in
   ``tensorflow.python.framework.tensor``). ``tf_slim.layers.utils.constant_value``
   calls ``isinstance(x, ops.Tensor)`` on every ``is_training`` argument, so every
   slim layer with a training flag fails without it.
2. ``tensorflow.python.ops.control_flow_ops.cond`` is gone. ``smart_cond`` calls
   it when ``is_training`` is a tensor (e.g. a ``placeholder_with_default``);
   ``tf.compat.v1.cond`` is the same function (Switch/Merge in TF1 control flow,
   an ``If`` op under TF2 control flow).
3. slim's default batch-norm path (``fused`` None/True with the ``UPDATE_OPS``
   collection) builds the legacy ``tf.layers`` BatchNormalization, which
   ``tensorflow.python.layers.normalization`` lazily imports from
   ``tf_keras.legacy_tf_layers.normalization``; tf-keras 2.21 ships those modules
   as ``tf_keras.src.legacy_tf_layers.*``, so they are registered in
   ``sys.modules`` under the old names.

The patches only add names; nothing that exists is replaced.
"""

import importlib
import sys

import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_ops

if not hasattr(ops, "Tensor"):
    ops.Tensor = tf.Tensor

if not hasattr(control_flow_ops, "cond"):
    control_flow_ops.cond = tf.compat.v1.cond

_LEGACY_LAYERS = ("base", "convolutional", "core", "normalization", "pooling")
if "tf_keras.legacy_tf_layers" not in sys.modules:
    sys.modules["tf_keras.legacy_tf_layers"] = importlib.import_module(
        "tf_keras.src.legacy_tf_layers"
    )
    for _name in _LEGACY_LAYERS:
        sys.modules[f"tf_keras.legacy_tf_layers.{_name}"] = importlib.import_module(
            f"tf_keras.src.legacy_tf_layers.{_name}"
        )
