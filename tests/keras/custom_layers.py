"""A tf_keras sequence model with a custom layer, as Keras 2-era packages ship them (crema's ``SqueezeLayer``):
conv features -> BN (4-D, fused) -> custom squeeze -> GRU sequences -> BN (3-D) -> two per-frame outputs.

Imported by the tests and, through ``--import custom_layers`` / ``--model custom_layers:build_model``, by the
``ckptfix`` subprocesses they run (``tests/keras`` is on their PYTHONPATH)."""

from __future__ import annotations

import numpy as np

FRAMES, BINS = 12, 6

__all__ = ["Squeeze"]


def _tf_keras():
    """Keras 2 (tf.keras on TensorFlow 2.15, tf_keras later: :func:`keras_models.keras2`)."""
    import keras_models

    return keras_models.keras2()


def _squeeze_class():
    tf_keras = _tf_keras()

    class Squeeze(tf_keras.layers.Layer):
        """Removes a length-1 axis (crema's SqueezeLayer)."""

        def __init__(self, axis=-1, **kwargs):
            super().__init__(**kwargs)
            self.axis = axis

        def call(self, x):
            return tf_keras.backend.squeeze(x, axis=self.axis)

        def compute_output_shape(self, input_shape):
            shape = list(input_shape)
            del shape[self.axis]
            return tuple(shape)

        def get_config(self):
            return {**super().get_config(), "axis": self.axis}

    Squeeze.__module__ = __name__
    return Squeeze


Squeeze = _squeeze_class()
CUSTOM_OBJECTS = {"Squeeze": Squeeze}


def _keras3_class():
    import keras  # on TensorFlow 2.15 Keras 2: the tests that use this class skip there (keras_models.keras3)

    class Twice(keras.layers.Layer):
        """A Keras 3 custom layer (no config beyond the base's)."""

        def call(self, x):
            return x * 2.0

    Twice.__module__ = __name__
    return Twice


KERAS3_OBJECTS = {"Twice": _keras3_class()}


def keras3_model():
    """A Keras 3 model with a custom layer after a Dense + BN (for a .keras archive)."""
    import keras_models

    keras = keras_models.keras3()

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3)(inputs))
    return keras.Model(inputs, KERAS3_OBJECTS["Twice"](name="twice")(x))


def build_model():
    """The architecture, built by code (what ``--model`` takes when a saved config cannot be deserialised)."""
    tf_keras = _tf_keras()
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((None, BINS, 1), name="features")
    x = tf_keras.layers.Conv2D(4, (3, BINS), padding="valid", name="conv")(inputs)  # (T - 2, 1, 4)
    x = tf_keras.layers.BatchNormalization(name="bn_conv")(x)
    x = Squeeze(axis=2, name="squeeze")(x)
    x = tf_keras.layers.GRU(5, return_sequences=True, name="gru")(x)
    x = tf_keras.layers.BatchNormalization(name="bn_seq")(x)
    tags = tf_keras.layers.TimeDistributed(tf_keras.layers.Dense(3, activation="softmax"), name="tags")(x)
    roots = tf_keras.layers.TimeDistributed(tf_keras.layers.Dense(4, activation="softmax"), name="roots")(x)
    return tf_keras.Model(inputs, [tags, roots])


def sequences(count: int, seed: int) -> np.ndarray:
    """``count`` feature sequences (FRAMES, BINS, 1) far from BN's initial 0 / 1 statistics."""
    rng = np.random.default_rng(seed)
    return (3.0 + 2.0 * rng.normal(size=(count, FRAMES, BINS, 1))).astype(np.float32)
