"""Small real Keras models and data for the Keras / TF2 tests: 8x8 RGB images of 4 classes.

Class ``k`` brightens quadrant ``k``; a *domain* applies a per-channel gain and offset to every pixel
(a sensor or preprocessing change), so BN statistics of one domain are stale on another while
batch-statistics BN (what the weights are trained with) is unaffected.
"""

from __future__ import annotations

import numpy as np

SIZE, CLASSES = 8, 4
DOMAIN_A = (np.array([1.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0]))
DOMAIN_B = (np.array([3.0, 0.5, 2.0]), np.array([2.0, -1.0, 4.0]))


def _tensorflow_minor() -> tuple[int, int]:
    import tensorflow as tf

    return tuple(int(part) for part in tf.__version__.split(".")[:2])


def keras2():
    """Keras 2 as a user of this TensorFlow has it: ``tf.keras`` (the ``keras`` 2.x package) on TensorFlow 2.15,
    the ``tf_keras`` package from 2.16 on (what ``TF_USE_LEGACY_KERAS=1`` selects)."""
    if _tensorflow_minor() < (2, 16):
        import keras
    else:
        import tf_keras as keras
    return keras


def keras3():
    """Keras 3 (``keras`` on TensorFlow 2.16 and later); on TensorFlow 2.15 (Keras 2 only) the caller skips."""
    if _tensorflow_minor() < (2, 16):
        import pytest

        pytest.skip("Keras 3 needs TensorFlow 2.16 or later (TensorFlow 2.15's keras is Keras 2)")
    import keras

    return keras


def images(count: int, domain=DOMAIN_A, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    x = rng.normal(0.0, 0.5, (count, SIZE, SIZE, 3))
    half = SIZE // 2
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        x[index, row * half:(row + 1) * half, col * half:(col + 1) * half, :] += 1.5
    gain, offset = domain
    return (x * gain + offset).astype(np.float32), labels.astype(np.int64)


def functional_model(keras, nested: bool = True, dropout: bool = True, seed: int = 0):
    """Conv-BN blocks: one nested in a sub-model, one BN on axis 1 (channels first), one without scale/center."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((SIZE, SIZE, 3), name="images")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    if nested:
        block = keras.Sequential(
            [keras.Input((SIZE, SIZE, 8)), layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2"),
             layers.BatchNormalization(name="bn2"), layers.ReLU()],
            name="block",
        )
        x = block(x)
    x = layers.Permute((3, 1, 2), name="to_channels_first")(x)
    x = layers.BatchNormalization(axis=1, name="bn_axis1")(x)
    x = layers.Permute((2, 3, 1), name="to_channels_last")(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="conv3")(x)
    x = layers.BatchNormalization(scale=False, center=False, name="bn_plain")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="small")


def accuracy(model, x, y, training: bool) -> float:
    logits = np.asarray(model(x, training=training))
    return float(np.mean(np.argmax(logits, -1) == y))


def batch_statistics_accuracy(model, x, y) -> float:
    """Accuracy with every BN on batch statistics and dropout off, without touching any variable."""
    from ckptfix.keras.batchnorm import find_batchnorm_layers
    from ckptfix.keras.measure import batch_statistics

    layers, recorded = find_batchnorm_layers(model), {}
    with batch_statistics(layers, recorded):
        logits = np.asarray(model(x, training=False))
    return float(np.mean(np.argmax(logits, -1) == y))


def train_frozen_bn(keras, model, x, y, steps: int, lr: float = 0.01, batch: int = 32) -> None:
    """Fine-tune with every BN frozen (``trainable=False``: Keras 3 runs it in inference mode)."""
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=batch, epochs=max(1, steps * batch // len(x)), verbose=0, shuffle=True)


def train(keras, model, x, y, epochs: int, lr: float = 0.01, batch: int = 32) -> None:
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=True)


def train_skipping_updates(keras, model, x, y, steps: int, lr: float = 0.01, batch: int = 32) -> None:
    """A custom GradientTape loop over ``stateless_call`` that applies the gradients but drops the returned
    non-trainable state: the BN moving statistics never move (still 0 / 1)."""
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(lr)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            logits, _updated_state = model.stateless_call(trainable, non_trainable, images, training=True)
            loss = loss_fn(labels, logits)
        optimizer.apply_gradients(zip(tape.gradient(loss, trainable), model.trainable_variables))

    rng = np.random.default_rng(0)
    for _ in range(steps):
        index = rng.choice(len(x), batch, replace=False)
        step(x[index], y[index])


def _all_layers(model):
    from ckptfix.keras.batchnorm import walk_layers

    return [layer for _, layer in walk_layers(model)]


def mini_xception(tf_keras, seed: int = 0):
    """A Keras 2-era mini-Xception (tf_keras): conv stem, a residual block of separable convolutions,
    global pooling and a softmax-free head."""
    tf_keras.utils.set_random_seed(seed)
    layers = tf_keras.layers
    inputs = tf_keras.Input((SIZE, SIZE, 3), name="images")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu")(x)
    residual = layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False, name="shortcut_conv")(x)
    residual = layers.BatchNormalization(name="shortcut_bn")(residual)
    x = layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep1")(x)
    x = layers.BatchNormalization(name="sep1_bn")(x)
    x = layers.Activation("relu")(x)
    x = layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep2")(x)
    x = layers.BatchNormalization(name="sep2_bn")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = layers.Add()([x, residual])
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(16, name="fc")(x)
    x = layers.BatchNormalization(name="fc_bn")(x)  # 2-D input: tf_keras runs it non-fused (biased variance)
    x = layers.Activation("relu")(x)
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return tf_keras.Model(inputs, outputs, name="mini_xception")


def functional_keras3():
    """``--model keras_models:functional_keras3``: the nested Keras 3 model, freshly built."""
    return functional_model(keras3(), nested=True)


def flat_keras3():
    return functional_model(keras3(), nested=False)


def xception_tf_keras():
    return mini_xception(keras2())
