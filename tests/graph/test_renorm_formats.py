"""Batch renormalization in every graph-level format: a frozen graph, a TF1 SavedModel (``simple_save``) and a TF2
SavedModel of a tf_keras model (``tf.saved_model.save``) apply the rule a checkpoint's ``.meta`` does
(test_bn_flavours.py): the ``renorm=True`` layer kept as stored, byte for byte, the plain BN after it repaired. Truth
from TensorFlow: the trained net's own logits in training mode (batch statistics, renorm's r and d) on held-out
samples, all in one batch. Enough calibration data (1,024 samples) that the repair gate passes without ``force``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from ckptfix.errors import NoBatchNormError
import forked
from cli.test_errors import run_cli

sys.path.insert(0, str(Path(__file__).parent.parent / "keras"))

import keras_models as km  # noqa: E402  (Keras 2 of this TensorFlow)

TOOL = Path(__file__).with_name("bn_flavours_tool.py")
KEPT = "batch renormalization (renorm=True) in bn0: kept as stored"
BN0 = ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev")


@pytest.fixture(scope="module")
def renorm(tmp_path_factory) -> dict:
    """bn_flavours_tool.py's ``renorm`` case: its checkpoint, ``frozen.pb`` and ``saved_model/``."""
    root = tmp_path_factory.mktemp("renorm")
    result = forked.run([sys.executable, str(TOOL), str(root), "renorm"], timeout=300,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])["renorm"]
    info["root"] = root / "renorm"
    return info


def relative_error(logits: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(logits - truth).mean() / np.abs(truth).mean())


def assert_closer_to_training(stale: np.ndarray, repaired: np.ndarray, truth: np.ndarray) -> None:
    # measured: stale 8.06 (the TF1 net) and 3.39 (the tf_keras net), repaired 0.092 and 0.088 (bn1's statistics
    # from 1,024 other samples)
    error = {"stale": relative_error(stale, truth), "repaired": relative_error(repaired, truth)}
    assert error["repaired"] < 0.2, error
    assert error["stale"] > 20 * error["repaired"], error


def _frozen_values(path: Path) -> dict[str, np.ndarray]:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return {node.name: tf.make_ndarray(node.attr["value"].tensor) for node in graph_def.node if node.op == "Const"}


def _frozen_logits(path: Path, images: np.ndarray) -> np.ndarray:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run("logits/BiasAdd:0", {"images:0": images})


@pytest.mark.subprocess  # the fixture's process, a CLI run
def test_frozen_graph(renorm, tmp_path):
    """Through the CLI: the notice, bn1 alone written, every other constant (bn0's statistics and its renorm_mean /
    renorm_stddev among them) the same bytes."""
    root = renorm["root"]
    out = tmp_path / "repaired.pb"
    result = run_cli("recalibrate", root / "frozen.pb", root / "data.npy", "--batch-size", renorm["batch"], "-o", out,
                     "--no-shuffle", "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert KEPT in result.stderr
    assert [layer["name"] for layer in json.loads(result.stdout)["layers"]] == ["bn1"]
    before, after = _frozen_values(root / "frozen.pb"), _frozen_values(out)
    # moving_stddev only feeds the update ops, which freezing drops
    assert {f"bn0/{name}" for name in BN0} - set(before) == {"bn0/moving_stddev"}
    for name, value in before.items():
        assert (after[name].tobytes() == value.tobytes()) != (name in ("bn1/moving_mean", "bn1/moving_variance")), name
    reference = np.load(root / "reference.npz")
    np.testing.assert_allclose(after["bn1/moving_mean"], reference["bn1/mean"], rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(after["bn1/moving_variance"], reference["bn1/variance"], rtol=2e-3)
    heldout = np.load(root / "heldout.npy")
    assert_closer_to_training(_frozen_logits(root / "frozen.pb", heldout), _frozen_logits(out, heldout),
                              np.load(root / "training_logits.npy"))


def _served(folder: Path, images: np.ndarray, key: str) -> np.ndarray:
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    return signature(**{key: tf.constant(images)})[next(iter(signature.structured_outputs))].numpy()


def _check_saved_model(stale: Path, repaired: Path, bn0_key: str, written: dict[str, str]) -> None:
    """Every tensor of ``variables/`` but the ``written`` keys has its bytes (bn0's five, keyed ``bn0_key % name``,
    among them)."""
    before = tf.train.load_checkpoint(str(stale / "variables" / "variables"))
    after = tf.train.load_checkpoint(str(repaired / "variables" / "variables"))
    assert {bn0_key % name for name in BN0} <= set(before.get_variable_to_shape_map())
    for key in before.get_variable_to_shape_map():
        same = np.asarray(after.get_tensor(key)).tobytes() == np.asarray(before.get_tensor(key)).tobytes()
        assert same != (key in written.values()), key


@pytest.mark.subprocess  # the fixture's process
def test_tf1_saved_model(renorm, tmp_path):
    """``simple_save`` of the same trained net: the signature feeds ``images`` only; the graph's ``is_training``
    (a ``placeholder_with_default``) is the training flag, fed False."""
    root = renorm["root"]
    notices = []
    report = ckptfix.recalibrate(root / "saved_model", np.load(root / "data.npy"), batch_size=renorm["batch"],
                                 shuffle=False, output=tmp_path / "out", on_notice=notices.append)
    assert any(KEPT in n for n in notices), notices
    assert [layer.name for layer in report.layers] == ["bn1"] and report.training_flag == "is_training:0"
    _check_saved_model(root / "saved_model", tmp_path / "out", "bn0/%s",
                       {"mean": "bn1/moving_mean", "variance": "bn1/moving_variance"})
    reference = np.load(root / "reference.npz")
    np.testing.assert_allclose(report.layers[0].new_mean, reference["bn1/mean"], rtol=2e-3, atol=1e-4)
    heldout = np.load(root / "heldout.npy")
    assert_closer_to_training(_served(root / "saved_model", heldout, "images"), _served(tmp_path / "out", heldout, "images"),
                              np.load(root / "training_logits.npy"))


def _tf_keras_renorm_net(folder: Path):
    """conv -> BN(renorm) -> relu -> conv -> BN -> relu -> pooling -> dense in Keras 2, trained one epoch with every BN in
    training mode and its statistics restored afterwards (the updates a forgotten UPDATE_OPS never ran), exported with
    ``tf.saved_model.save`` (no ``keras_metadata.pb``: repaired at graph level). Returns the calibration samples,
    bn1's input on them (bn0 in inference mode, as ckptfix measures it), the held-out samples and the net's
    training-mode logits on them."""
    keras = km.keras2()
    keras.utils.set_random_seed(0)
    images = keras.Input((6, 6, 3))
    net = keras.layers.Conv2D(4, 3, padding="same")(images)
    net = keras.layers.ReLU()(keras.layers.BatchNormalization(renorm=True, name="bn0")(net))
    bn1_input = keras.layers.Conv2D(4, 3, padding="same")(net)
    net = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(bn1_input))
    model = keras.Model(images, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(net)))
    rng = np.random.default_rng(3)
    data, heldout = (rng.normal(1.0, 2.0, (1024, 6, 6, 3)).astype(np.float32) for _ in range(2))
    stale = [w.numpy() for w in model.non_trainable_weights]
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, data.mean(axis=(1, 2)).argmax(-1), batch_size=16, epochs=1, verbose=0)
    for weight, value in zip(model.non_trainable_weights, stale):
        weight.assign(value)
    tf.saved_model.save(model, str(folder))
    features = np.asarray(keras.Model(images, bn1_input)(data, training=False), np.float64).reshape(-1, 4)
    truth = np.asarray(model(heldout, training=True))  # updates the statistics in memory; the export is on disk
    return data, features, heldout, truth


def test_tf2_saved_model_of_a_tf_keras_model(tmp_path):
    """The serving signature (training=False) never reads renorm_mean: the checkpoint's object graph shows it."""
    data, features, heldout, truth = _tf_keras_renorm_net(tmp_path / "model")
    assert not (tmp_path / "model" / "keras_metadata.pb").exists()
    notices = []
    report = ckptfix.recalibrate(tmp_path / "model", data, batch_size=16, shuffle=False, output=tmp_path / "out",
                                 on_notice=notices.append)
    assert report.model_format == "savedmodel-graph"
    assert any(KEPT in n for n in notices), notices
    (layer,) = report.layers
    assert layer.name == "bn1"
    _check_saved_model(tmp_path / "model", tmp_path / "out", "layer_with_weights-1/%s/.ATTRIBUTES/VARIABLE_VALUE",
                       {"mean": layer.mean_key, "variance": layer.variance_key})
    np.testing.assert_allclose(layer.new_mean, features.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.new_variance, features.var(0, ddof=1), rtol=1e-5)
    key = next(iter(tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"].structured_input_signature[1]))
    assert_closer_to_training(_served(tmp_path / "model", heldout, key), _served(tmp_path / "out", heldout, key), truth)


def test_a_saved_model_of_renorm_layers_only_has_nothing_to_recalibrate(tmp_path):
    keras = km.keras2()
    images = keras.Input((6, 6, 3))
    net = keras.layers.BatchNormalization(renorm=True, name="bn0")(keras.layers.Conv2D(4, 3)(images))
    tf.saved_model.save(keras.Model(images, net), str(tmp_path / "model"))
    with pytest.raises(NoBatchNormError, match="every BN layer in signature serving_default uses batch renormalization"):
        ckptfix.inspect(tmp_path / "model")
