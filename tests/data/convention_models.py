"""Stale Keras models that state their input's preprocessing in different ways, and the images of their task.

The task: RGB images (uint8) of a background whose brightness varies from image to image, with noise; the
quadrant ``k`` holding a brighter square is the label. Each model is trained (Adam, batch statistics) on the
pixels preprocessed the way it states, then its moving statistics are reset to the initial 0 / 1: what a
training loop that never ran the BN updates leaves. ``preprocess`` below is the truth, written here from the
model families' own definitions (Keras' ``preprocess_input`` modes), not from ckptfix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = 4


def pixels(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 images ``(size, size, 3)`` and their labels (balanced)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % CLASSES)
    background = rng.uniform(70.0, 150.0, (count, 1, 1, 1))
    x = background + rng.normal(0.0, 12.0, (count, size, size, 3))
    half = size // 2
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        x[index, row * half:(row + 1) * half, col * half:(col + 1) * half, :] += 45.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), labels.astype(np.int64)


def preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    """Keras' ``preprocess_input`` modes on 0..255 pixels (``tf``: [-1, 1]); ``raw``: as they are; ``unit``: /255."""
    x = x.astype(np.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "unit":
        return x / 255.0
    assert mode == "raw"
    return x


def write_pngs(folder: Path, images: np.ndarray) -> Path:
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    if tf.executing_eagerly():
        encoded = [tf.io.encode_png(image).numpy() for image in images]
    else:  # a TF1-style process (the slim tool)
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            image = tf.compat.v1.placeholder(tf.uint8, images.shape[1:])
            png = tf.io.encode_png(image)
            encoded = [session.run(png, {image: one}) for one in images]
    for index, data in enumerate(encoded):
        (folder / f"{index:03d}.png").write_bytes(data)
    return folder


def small_cnn(keras, size: int, first_layers=(), name: str = "small", dtype: str = "float32", momentum: float = 0.99):
    """``first_layers`` (e.g. a Rescaling) then conv-BN-relu twice, global pooling and a dense head (BN
    ``momentum``: 0.9 lets a short fit() bring the moving statistics to the data's)."""
    layers = keras.layers
    inputs = keras.Input((size, size, 3), name="images", dtype=dtype)
    x = inputs
    for layer in first_layers:
        x = layer(x)
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    x = layers.BatchNormalization(momentum=momentum, name="bn1")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(momentum=momentum, name="bn2")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(CLASSES, name="logits")(x), name=name)


def train_then_forget_statistics(keras, model, x, y, epochs: int, lr: float = 0.01) -> None:
    """Fit on batch statistics, then put every BN layer's moving statistics back to 0 / 1."""
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    reset_statistics(model)


def reset_statistics(model) -> None:
    for layer in _layers(model):
        if type(layer).__name__ == "BatchNormalization":
            layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
            layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def accuracy(logits, labels) -> float:
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))
