"""Issue 33: the images' preprocessing is read from the model where it is written down, or asked for.

One stale model per convention, repaired from PNGs by the CLI with no ``--preprocess``: its held-out accuracy
equals that of a repair with the right preset given explicitly (the truth, from the model family's own
definition: tests/data/convention_models.py, tests/data/slim_resnet_tool.py), and a repair with a wrong preset
does measurably worse (so the comparison can fail). A model that says nothing, with PNGs: exit 2 before any
work.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import convention_models as cm
import forked

pytestmark = pytest.mark.subprocess
TOOL = Path(__file__).with_name("slim_resnet_tool.py")


@dataclass
class Case:
    """A stale model, its calibration PNGs, what the notice must say, the right and a wrong preset, and the
    held-out accuracy of a repaired copy (``evaluate(path)``); ``suffix``: the output's (file formats)."""

    model: Path
    pngs: Path
    says: str
    right: str
    wrong: str
    evaluate: Callable[[Path], float]
    suffix: str = ""


def _cli(*args, exit_code: int = 0) -> tuple[dict | None, str]:
    run = forked.run([sys.executable, "-m", "ckptfix", *map(str, args), "--no-progress", "--json"],
                     env=dict(os.environ), timeout=600)
    assert run.returncode == exit_code, run.stderr
    return (json.loads(run.stdout) if run.stdout.strip() else None), run.stderr


def _keras_case(folder: Path, keras, size: int, model, mode: str, says: str, right: str, wrong: str,
                suffix: str = ".keras", epochs: int = 6) -> Case:
    """Train ``model`` on pixels preprocessed by ``mode`` (the truth), forget its statistics, save it."""
    x, y = cm.pixels(512, size, 1)
    cm.train_then_forget_statistics(keras, model, cm.preprocess(x, mode), y, epochs)
    path = folder / f"model{suffix}"
    model.save(path)
    held_x, held_y = cm.pixels(256, size, 2)
    load = (lambda p: keras.saving.load_model(p)) if suffix == ".keras" else (
        lambda p: keras.models.load_model(p, compile=False))

    def evaluate(repaired: Path) -> float:
        return cm.accuracy(load(repaired)(cm.preprocess(held_x, mode), training=False), held_y)

    return Case(path, cm.write_pngs(folder / "pngs", cm.pixels(128, size, 3)[0]), says, right, wrong, evaluate,
                suffix)


@pytest.fixture(scope="module")
def rescaling(tmp_path_factory) -> Case:
    """Keras 3, ``Rescaling(1/255)`` as its first layer: pixels as they are."""
    import keras

    keras.utils.set_random_seed(0)
    model = cm.small_cnn(keras, 16, [keras.layers.Rescaling(1 / 255, name="rescale")])
    return _keras_case(tmp_path_factory.mktemp("rescaling"), keras, 16, model, "raw",
                       "chosen because its first layer rescale (Rescaling, scale 0.003922, offset 0)", "raw", "inception")


@pytest.fixture(scope="module")
def normalization(tmp_path_factory) -> Case:
    """tf_keras (.h5), a ``Normalization`` adapted on the training pixels as its first layer: pixels as they are."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    norm = tf_keras.layers.Normalization(name="normalize")
    norm.adapt(cm.preprocess(cm.pixels(512, 16, 1)[0], "raw"))
    model = cm.small_cnn(tf_keras, 16, [norm])
    return _keras_case(tmp_path_factory.mktemp("normalization"), tf_keras, 16, model, "raw",
                       "chosen because its first layer normalize (Normalization, adapted mean", "raw", "unit",
                       suffix=".h5")


@pytest.fixture(scope="module")
def application(tmp_path_factory) -> Case:
    """A Keras Application by its name (MobileNet, alpha 0.25, 32x32): its preprocess_input mode tf, [-1, 1]."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=cm.CLASSES,
                                         classifier_activation=None)
    assert model.name == "mobilenet_0.25_32"
    return _keras_case(tmp_path_factory.mktemp("application"), keras, 32, model, "tf",
                       "chosen because it is the Keras Applications model mobilenet_0.25_32 (preprocess_input mode tf)",
                       "inception", "raw", epochs=8)


@pytest.fixture(scope="module")
def uint8_signature(tmp_path_factory) -> Case:
    """A SavedModel whose serving signature takes uint8 images and scales them itself (x / 127.5 - 1)."""
    import keras
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("uint8")
    keras.utils.set_random_seed(0)
    model = cm.small_cnn(keras, 16)
    x, y = cm.pixels(512, 16, 1)
    cm.train_then_forget_statistics(keras, model, cm.preprocess(x, "tf"), y, 6)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda images: model(tf.cast(images, tf.float32) / 127.5 - 1.0, training=False),
                         input_signature=[tf.TensorSpec((None, 16, 16, 3), tf.uint8, name="images")])
    archive.write_out(str(folder / "served"), verbose=False)
    held_x, held_y = cm.pixels(256, 16, 2)

    def evaluate(repaired: Path) -> float:
        serve = tf.saved_model.load(str(repaired)).signatures["serving_default"]
        (logits,) = serve(**{next(iter(serve.structured_input_signature[1])): tf.constant(held_x)}).values()
        return cm.accuracy(logits, held_y)

    return Case(folder / "served", cm.write_pngs(folder / "pngs", cm.pixels(128, 16, 3)[0]),
                "chosen because the model input images takes uint8 pixels", "raw", "inception", evaluate)


@pytest.fixture(scope="module")
def slim_resnet_v1(tmp_path_factory) -> Case:
    """tf-slim's resnet_v1 (scope resnet_v1_50, one small block), trained on slim's VGG eval preprocessing."""
    folder = tmp_path_factory.mktemp("resnet_v1")
    built = forked.run([sys.executable, str(TOOL), "build", str(folder)], env=dict(os.environ), timeout=600)
    assert built.returncode == 0, built.stderr

    def evaluate(repaired: Path) -> float:
        run = forked.run([sys.executable, str(TOOL), "evaluate", str(repaired / "model.ckpt"), str(folder)],
                         env=dict(os.environ), timeout=600)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)["accuracy"]

    return Case(folder / "train", folder / "pngs", "chosen because it is the tf-slim network resnet_v1_50, which "
                "tf-slim's preprocessing_factory preprocesses with vgg", "vgg", "inception", evaluate)


@pytest.fixture(scope="module")
def slim_inception(slim_model) -> Case:
    """The seed's slim model (slim.batch_norm scopes, Inception preprocessing), with its PNGs."""
    from fixtures.runner import evaluate

    model = slim_model("seed")
    return Case(Path(model.prefix), model.images_dir, "chosen because its BN layers are scoped as slim.batch_norm's",
                "inception", "raw", lambda repaired: evaluate(model, str(repaired / Path(model.prefix).name), "inference"))


@pytest.mark.parametrize("convention", ["rescaling", "normalization", "uint8_signature", "application",
                                        "slim_resnet_v1", "slim_inception"])
def test_the_model_says_how_its_images_are_preprocessed(convention, request, tmp_path):
    case: Case = request.getfixturevalue(convention)
    auto, stderr = _cli("recalibrate", case.model, case.pngs, "-o", tmp_path / f"auto{case.suffix}")
    notice = next(line for line in stderr.splitlines() if "preprocessed with" in line)
    assert f"images preprocessed with {case.right}: " in notice and case.says in notice, notice
    assert notice.endswith("(--preprocess sets another)")
    _cli("recalibrate", case.model, case.pngs, "-o", tmp_path / f"right{case.suffix}", "--preprocess", case.right)
    _cli("recalibrate", case.model, case.pngs, "-o", tmp_path / f"wrong{case.suffix}", "--preprocess", case.wrong,
         "--force")
    repaired = {name: case.evaluate(tmp_path / f"{name}{case.suffix}") for name in ("auto", "right", "wrong")}
    assert repaired["auto"] == repaired["right"] >= 0.9, repaired
    assert repaired["wrong"] < repaired["right"] - 0.1, repaired


def test_a_model_that_says_nothing_asks_for_the_preprocessing(tmp_path):
    """A Keras model scaling nothing itself, with PNGs: exit 2 naming --preprocess and every preset, before any
    batch runs; nothing written."""
    import keras

    model = cm.small_cnn(keras, 16)
    model.save(tmp_path / "model.keras")
    pngs = cm.write_pngs(tmp_path / "pngs", cm.pixels(64, 16, 0)[0])
    for command in ("recalibrate", "diagnose"):
        report, stderr = _cli(command, tmp_path / "model.keras", pngs, exit_code=2)
        assert report is None and "calibrating" not in stderr
        assert stderr.strip().splitlines() == [
            "error: images need the model's preprocessing and nothing in the model says which: pass --preprocess "
            "PRESET (one of inception, vgg, caffe, torch, unit, raw) or --preprocess MODULE:FN."], stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "pngs"]
    np.save(tmp_path / "floats.npy", cm.preprocess(cm.pixels(64, 16, 0)[0], "tf"))  # arrays: taken as given
    _cli("diagnose", tmp_path / "model.keras", tmp_path / "floats.npy", exit_code=3)
