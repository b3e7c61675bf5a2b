"""The catalogue's models ("subjects"), each with the domain its calibration and held-out data come from and the
way an unchanged evaluation script scores it.

Keras 3 models are trained here, in-process, on the 8x8 four-class task of ``tests/keras/keras_models.py``
made harder (noise, a colour cast per class: :func:`task_images`; a few seconds each): domain ``B``
(per-channel gain and offset) is the one they are used on, domain ``A`` the
earlier one. Their moving statistics are stale in the ways users meet:

    keras-stale01    trained on B by a loop that drops the BN updates: statistics still 0 / 1
    keras-earlier    trained on A with the updates, then fine-tuned on B without them: A's statistics
    keras-healthy    trained on B with the updates (80 steps, BN momentum 0.9): statistics of B
    keras-partial    keras-healthy with its first BN layer's statistics back at 0 / 1 (a layer whose
                     updates never ran: only some layers stale)
    keras-frozen     trained on A, then fine-tuned on B (64 steps) with every BN frozen (``trainable=False``:
                     Keras runs them in inference mode, so the weights were fitted to A's statistics on B's data;
                     its "training mode" accuracy is that mode too)
    keras-dense512   a conv stem and a 512-unit Dense + BN layer, trained on B without the updates (0 / 1)

The slim fixtures (``tests/fixtures/slim_models.py``, trained in processes of their own: ``seed`` stale at 0 / 1,
``nonfused_pretrained`` stale from a pretraining domain; ``slim-healthy``, ``seed`` repaired from 2,560 samples of
its domain, is built by the catalogue) and the embedded demo (``ckptfix/demo.py``, TF1 graph,
0 / 1) are scored by their own eval scripts on the pixel task they were trained on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "keras"))

import keras_models as km  # noqa: E402

#: held-out samples per domain (every accuracy of the truth is measured on this many)
HELD_OUT_SIZE = 1024
#: seeds of the data drawn from a domain (calibration data uses CALIBRATION_SEED + a case's own offset)
HELD_OUT_SEED, ORACLE_SEED, CALIBRATION_SEED = 900, 77, 3


@dataclass(frozen=True)
class Domain:
    """Where samples come from. ``sample(count, seed)`` -> model inputs (float32, as the model takes them) and
    int labels; ``pixels(count, seed)`` -> uint8 images and labels for domains of image files (else None): the
    inputs are then ``pixels / 127.5 - 1`` (Inception preprocessing, ckptfix's default for image files)."""

    name: str
    sample: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    pixels: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None


#: the 8x8 task made harder and closer to real classes: pixel noise, and a colour cast per class (so that data
#: sorted by class has class-biased channel statistics)
NOISE = 1.5
CLASS_CAST = np.array([[0.4, 0.0, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 0.4], [-0.4, -0.4, -0.4]])


def task_images(count: int, gain, offset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``keras_models.images`` (class k brightens quadrant k) with NOISE and CLASS_CAST added, then a per-channel
    ``gain`` and ``offset`` (the domain)."""
    x, y = km.images(count, km.DOMAIN_A, seed)
    x = x + CLASS_CAST[y][:, None, None, :] + np.random.default_rng(seed + 10_000).normal(0.0, NOISE, x.shape)
    return (x * np.asarray(gain, float) + np.asarray(offset, float)).astype(np.float32), y


def keras_domain(name: str, gain, offset) -> Domain:
    """The 8x8 task under a per-channel ``gain`` and ``offset`` (a sensor or preprocessing change)."""
    return Domain(name, lambda count, seed: task_images(count, gain, offset, seed))


KERAS_A = keras_domain("A", *km.DOMAIN_A)
KERAS_B = keras_domain("B", *km.DOMAIN_B)
#: B with 3 % more contrast and a little brightness: what another camera or a resize might do
KERAS_B_BENIGN = keras_domain("B, contrast x1.03, brightness +0.1", km.DOMAIN_B[0] * 1.03, km.DOMAIN_B[1] * 1.03 + 0.1)
#: B rescaled to a third and moved: another input convention altogether
KERAS_B_HARSH = keras_domain("B, scale x0.3, offset -2", km.DOMAIN_B[0] * 0.3, km.DOMAIN_B[1] * 0.3 - 2.0)


def pixel_domain(name: str, make_pixels: Callable[[int, int], tuple[np.ndarray, np.ndarray]]) -> Domain:
    def sample(count: int, seed: int):
        pixels, labels = make_pixels(count, seed)
        return (pixels.astype(np.float32) / 127.5 - 1.0), np.asarray(labels, np.int64)

    return Domain(name, sample, make_pixels)


@dataclass
class HeldOut:
    """A domain's held-out set, in memory and as ``.npy`` files (the slim eval script reads files)."""

    x: np.ndarray
    y: np.ndarray
    x_path: Path
    y_path: Path

    @classmethod
    def draw(cls, domain: Domain, folder: Path) -> HeldOut:
        x, y = domain.sample(HELD_OUT_SIZE, HELD_OUT_SEED)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "x.npy", x)
        np.save(folder / "y.npy", y)
        return cls(x, y, folder / "x.npy", folder / "y.npy")


@dataclass(frozen=True)
class Subject:
    """A model as given to ckptfix (``checkpoint``), its domain, and ``accuracy(checkpoint, held_out, mode)``:
    the share of held-out samples an unchanged eval script gets right, ``mode`` ``inference`` (the stored
    moving statistics) or ``training`` (BN on batch statistics). ``frozen_trained``: its BN ran in inference mode
    while the weights were trained (the stored statistics are what they were fitted to)."""

    name: str
    checkpoint: str
    domain: Domain
    accuracy: Callable[[str, HeldOut, str], float]
    frozen_trained: bool = False
    options: dict = field(default_factory=dict)


# --- Keras 3, in-process ----------------------------------------------------------------------------------

TRAINING_BATCH = 32
#: BN momentum of the Keras subjects (Keras' default 0.99 needs ~300 steps to forget the initial 0 / 1)
MOMENTUM = 0.9


def keras_accuracy(checkpoint: str, held_out: HeldOut, mode: str) -> float:
    """Load the ``.keras`` file afresh; inference mode on all samples, or training mode (each batch of 32 on its
    own statistics; the models have no dropout) -- on a copy whose moving statistics that call moves."""
    import keras

    model = keras.models.load_model(checkpoint, compile=False)
    if mode == "inference":
        logits = np.asarray(model(held_out.x, training=False))
    else:
        logits = np.concatenate([np.asarray(model(held_out.x[i:i + TRAINING_BATCH], training=True))
                                 for i in range(0, len(held_out.x), TRAINING_BATCH)])
    return float(np.mean(np.argmax(logits, -1) == held_out.y))


def _dense512(keras, seed: int):
    """A conv stem, then a 512-unit Dense layer with BN (statistics of 512 channels from few samples)."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((km.SIZE, km.SIZE, 3), name="images")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(name="conv_bn")(x))
    x = layers.Dense(512, use_bias=False, name="fc")(layers.Flatten()(x))
    x = layers.ReLU()(layers.BatchNormalization(name="fc_bn")(x))
    return keras.Model(inputs, layers.Dense(km.CLASSES, name="logits")(x), name="dense512")


def _reset_statistics(layer) -> None:
    layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
    layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))


def build_keras_subjects(folder: Path) -> dict[str, Subject]:
    """Train the Keras subjects (see the module docstring) and save each as ``<name>.keras`` in ``folder``."""
    import keras

    from ckptfix.keras.batchnorm import walk_layers

    folder.mkdir(parents=True, exist_ok=True)
    train_a = KERAS_A.sample(512, 1)
    train_b = KERAS_B.sample(512, 2)
    plain = dict(nested=False, dropout=False)
    models = {}

    def fresh(seed: int, build=km.functional_model):
        model = build(keras, seed=seed, **({} if build is _dense512 else plain))
        for _, layer in walk_layers(model):  # moving statistics that settle in ~50 steps: quick to train
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = MOMENTUM
        return model

    models["keras-stale01"] = fresh(1)
    km.train_skipping_updates(keras, models["keras-stale01"], *train_b, steps=100)

    models["keras-earlier"] = fresh(2)
    km.train(keras, models["keras-earlier"], *train_a, epochs=5)
    km.train_skipping_updates(keras, models["keras-earlier"], *train_b, steps=100)

    models["keras-healthy"] = fresh(3)
    km.train(keras, models["keras-healthy"], *train_b, epochs=5)

    models["keras-frozen"] = fresh(4)
    km.train(keras, models["keras-frozen"], *train_a, epochs=5)
    km.train_frozen_bn(keras, models["keras-frozen"], *train_b, steps=64, lr=0.003)

    models["keras-dense512"] = fresh(5, _dense512)
    km.train_skipping_updates(keras, models["keras-dense512"], *train_b, steps=100)

    paths = {name: folder / f"{name}.keras" for name in [*models, "keras-partial"]}
    for name, model in models.items():
        model.save(paths[name])
    partial = keras.models.load_model(paths["keras-healthy"], compile=False)
    _reset_statistics(partial.get_layer("bn1"))
    partial.save(paths["keras-partial"])

    return {name: Subject(name, str(path), KERAS_B, keras_accuracy, frozen_trained=name == "keras-frozen")
            for name, path in paths.items()}


# --- the slim fixtures (TF1 graphs trained and evaluated in processes of their own) -------------------------

def slim_subject(name: str, model) -> Subject:
    """A built slim fixture (``fixtures.runner.SlimModel``), scored by its own eval script (``runner.evaluate``)."""
    from fixtures import runner
    from fixtures.slim_models import make_pixels

    def accuracy(checkpoint: str, held_out: HeldOut, mode: str) -> float:
        return runner.evaluate(model.variant, checkpoint, mode, held_out.x_path, held_out.y_path)

    return Subject(name, model.prefix, pixel_domain("slim task", lambda count, seed: make_pixels(count, seed)),
                   accuracy)


# --- the embedded demo (a TF1 graph built in-process in a graph of its own) --------------------------------

def demo_subject(folder: Path) -> Subject:
    from ckptfix import demo

    prefix = demo.train_without_update_ops(folder / "train")

    def make_pixels(count: int, seed: int):
        dataset = demo.make_dataset(count, seed)
        return dataset.pixels, dataset.labels

    def accuracy(checkpoint: str, held_out: HeldOut, mode: str) -> float:
        pixels = np.rint((held_out.x + 1.0) * 127.5).astype(np.uint8)
        return demo.evaluate(Path(checkpoint).parent, demo.Dataset(pixels, held_out.y),
                             training_mode=mode == "training")

    return Subject("demo", prefix, pixel_domain("demo task", make_pixels), accuracy)
