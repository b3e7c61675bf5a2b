"""Real Keras 3 and tf_keras models with stale BN statistics, trained once per session and saved in every
format ckptfix repairs. Calibration data and held-out data come from the domain the weights were last
trained on."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import keras_models as km  # noqa: E402


@dataclass
class Stale:
    """A stale model's files (by format), its calibration data and held-out samples, and its accuracies."""

    folder: Path
    files: dict[str, Path]
    calibration: Path
    held_out: tuple[np.ndarray, np.ndarray]
    inference_accuracy: float
    batch_accuracy: float
    builder: str = ""
    extra: dict = field(default_factory=dict)


def _calibration(folder: Path, domain, seed: int) -> Path:
    path = folder / "calibration.npy"
    np.save(path, km.images(256, domain, seed)[0])
    return path


def _stale(folder: Path, files: dict[str, Path], model, domain, builder: str) -> Stale:
    """The saved ``model`` as a :class:`Stale`: calibration data and held-out samples from ``domain``, and the
    model's accuracy on them in inference mode and on batch statistics."""
    held_out = km.images(256, domain, 9)
    return Stale(folder, files, _calibration(folder, domain, 3), held_out,
                 km.accuracy(model, *held_out, training=False), km.batch_statistics_accuracy(model, *held_out),
                 builder=builder)


@pytest.fixture(scope="session")
def keras_frozen(tmp_path_factory) -> Stale:
    """Keras 3: trained on domain A, then fine-tuned on domain B with every BN frozen (trainable=False)."""
    keras = km.keras3()

    folder = tmp_path_factory.mktemp("keras_frozen")
    model = km.functional_model(keras)
    km.train(keras, model, *km.images(512, km.DOMAIN_A, 1), epochs=4)
    km.train_frozen_bn(keras, model, *km.images(512, km.DOMAIN_B, 2), steps=16, lr=0.001)
    files = {"keras": folder / "model.keras", "weights-h5": folder / "model.weights.h5"}
    model.save(files["keras"])
    model.save_weights(files["weights-h5"])
    return _stale(folder, files, model, km.DOMAIN_B, builder="keras_models:functional_keras3")


@pytest.fixture(scope="session")
def keras_skipped(tmp_path_factory) -> Stale:
    """Keras 3, no nested model: a GradientTape loop over stateless_call that drops the BN updates."""
    import tensorflow as tf

    keras = km.keras3()

    folder = tmp_path_factory.mktemp("keras_skipped")
    model = km.functional_model(keras, nested=False, seed=1)
    km.train_skipping_updates(keras, model, *km.images(512, km.DOMAIN_A, 1), steps=60)
    files = {"weights-h5": folder / "model.weights.h5", "tf-checkpoint": folder / "ckpt" / "ckpt-1"}
    model.save_weights(files["weights-h5"])
    tf.train.Checkpoint(model=model).write(str(files["tf-checkpoint"]))
    return _stale(folder, files, model, km.DOMAIN_A, builder="keras_models:flat_keras3")


@pytest.fixture(scope="session")
def keras2_xception(tmp_path_factory) -> Stale:
    """Keras 2 (tf_keras; tf.keras on TensorFlow 2.15): a mini-Xception trained on domain A, then one epoch on
    domain B (momentum 0.99: too few steps for the moving statistics), saved as .h5, save_weights checkpoint and
    SavedModel."""
    tf_keras = km.keras2()

    folder = tmp_path_factory.mktemp("keras2_xception")
    model = km.mini_xception(tf_keras)
    km.train(tf_keras, model, *km.images(512, km.DOMAIN_A, 1), epochs=3)
    km.train(tf_keras, model, *km.images(512, km.DOMAIN_B, 2), epochs=1)
    files = {"h5": folder / "xception.h5", "tf-checkpoint": folder / "weights" / "ckpt", "savedmodel": folder / "savedmodel",
             "weights-h5": folder / "xception.weights.h5"}
    model.save(files["h5"])
    model.save_weights(files["weights-h5"])
    model.save_weights(str(files["tf-checkpoint"]))
    model.save(files["savedmodel"], save_format="tf")
    return _stale(folder, files, model, km.DOMAIN_B, builder="keras_models:xception_tf_keras")
