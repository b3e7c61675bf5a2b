"""Every model format's reports -- inspect, diagnose, recalibrate, and a repair the gate refuses -- hold to
docs/report.schema.json exactly (tests/diagnostics/schema.py: types, enums, required and only documented
fields). The models are tiny and never trained: their statistics are the initial 0 / 1, stale on any data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from ckptfix.errors import RepairRefused
from ckptfix.keras.formats import MODEL_FORMATS
from ckptfix.sources.saved_model import FORMAT as SAVED_MODEL_GRAPH
from diagnostics.schema import SCHEMA, validate_report

v1 = tf.compat.v1
DATA = (np.random.default_rng(5).standard_normal((32, 8, 8, 3)) * 2 + 1).astype(np.float32)


def _tf1(folder: Path) -> dict:
    """A TF1 checkpoint + .meta (fused and non-fused BN under a training flag), and its frozen GraphDef."""
    from ckptfix.demo import fused_batch_norm, moments_batch_norm

    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        flag = v1.placeholder_with_default(False, [], name="is_training")
        kernel = v1.get_variable("conv/kernel", [3, 3, 3, 4])
        net = tf.nn.relu(fused_batch_norm(tf.nn.conv2d(images, kernel, 1, "SAME"), flag, "conv/BatchNorm"))
        net = tf.reduce_mean(moments_batch_norm(net, flag, "second/BatchNorm"), axis=[1, 2])
        logits = tf.matmul(net, v1.get_variable("dense", [4, 3]), name="logits")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(session, str(folder / "model.ckpt"))
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), [logits.op.name])
    tf.io.write_graph(frozen, str(folder), "frozen.pb", as_text=False)
    return {"tf1": prefix, "frozen": folder / "frozen.pb"}


def _keras(folder: Path) -> dict:
    """One Keras 3 model in each Keras / TF2 format, and its ``model.export()`` SavedModel."""
    import keras

    keras.utils.set_random_seed(0)

    def build():
        inputs = keras.Input((8, 8, 3), name="images")
        x = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
        return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))

    model = build()
    model.save(folder / "model.keras")
    model.save(folder / "model.h5")
    model.save_weights(folder / "model.weights.h5")
    tf.train.Checkpoint(model=model).write(str(folder / "ckpt" / "ckpt-1"))
    model.export(str(folder / "exported"), verbose=False)
    return {"keras": (folder / "model.keras", {}), "h5": (folder / "model.h5", {}),
            "weights-h5": (folder / "model.weights.h5", {"model": build}),
            "tf-checkpoint": (folder / "ckpt" / "ckpt-1", {"model": build}),
            SAVED_MODEL_GRAPH: (folder / "exported", {})}


def _tf_keras_savedmodel(folder: Path) -> Path:
    import tf_keras

    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.BatchNormalization()(tf_keras.layers.Conv2D(4, 3, padding="same")(inputs))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3)(tf_keras.layers.GlobalAveragePooling2D()(x)))
    model.save(str(folder / "saved"), save_format="tf")
    return folder / "saved"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """format -> (CKPT, the options it needs)."""
    folder = tmp_path_factory.mktemp("schema")
    tf1 = _tf1(folder)
    return {"tf1": (tf1["tf1"], {}), "frozen": (tf1["frozen"], {}), **_keras(folder),
            "savedmodel": (_tf_keras_savedmodel(folder), {})}


def _output(folder: Path, checkpoint) -> Path:
    """An output of the input's kind: a file with its suffix (``.weights.h5`` whole), else a folder."""
    name = Path(checkpoint).name
    suffix = ".weights.h5" if name.endswith(".weights.h5") else Path(checkpoint).suffix
    return folder / ("out" + (suffix if suffix in (".pb", ".keras", ".h5", ".weights.h5") else ""))


FORMATS = ["tf1", "frozen", "keras", "h5", "weights-h5", "tf-checkpoint", "savedmodel", SAVED_MODEL_GRAPH]


@pytest.mark.parametrize("model_format", FORMATS)
def test_every_report_of_every_format_holds_to_the_schema(models, model_format, tmp_path):
    checkpoint, options = models[model_format]
    inspection = ckptfix.inspect(checkpoint, **options)
    diagnosis = ckptfix.diagnose(checkpoint, DATA, batch_size=8, **options)
    recalibration = ckptfix.recalibrate(checkpoint, DATA, batch_size=8, output=_output(tmp_path, checkpoint), **options)
    assert diagnosis.verdict == "stale" and recalibration.gate.passed
    for report in (inspection, diagnosis, recalibration):
        content = report.to_dict()
        validate_report(content)
        assert content.get("model_format") == (None if model_format in ("tf1", "frozen") else model_format)


@pytest.mark.parametrize("model_format", ["tf1", "keras", SAVED_MODEL_GRAPH])
def test_a_refused_repair_and_an_inconclusive_diagnosis_hold_to_the_schema(models, model_format, tmp_path):
    """One sample per batch: BN on one sample's statistics; the gate refuses, the diagnosis has no verdict."""
    checkpoint, options = models[model_format]
    with pytest.raises(RepairRefused) as refused:
        ckptfix.recalibrate(checkpoint, DATA[:4], batch_size=1, output=_output(tmp_path, checkpoint), **options)
    diagnosis = ckptfix.diagnose(checkpoint, DATA[:4], batch_size=1, **options)
    assert diagnosis.verdict == "inconclusive" and not refused.value.report.gate.passed
    for content in (refused.value.report.to_dict(), diagnosis.to_dict()):
        validate_report(content)
    assert not _output(tmp_path, checkpoint).exists()


def test_the_schema_lists_every_model_format_a_report_can_name():
    reported = {name for name in MODEL_FORMATS if name != "tf1"} | {SAVED_MODEL_GRAPH}
    for kind in ("measured", "inspection"):
        assert set(SCHEMA["definitions"][kind]["properties"]["model_format"]["enum"]) == reported


def test_an_undocumented_field_fails_the_validator():
    """The strictness the tests rely on, in both directions."""
    report = {"schema_version": 1, "kind": "inspection", "checkpoint": "c", "meta": "m", "against": None,
              "flagged": [], "layers": [], "cause": None, "notices": []}
    validate_report(report)
    with pytest.raises(AssertionError, match="does not document"):
        validate_report({**report, "stability": 0.1})
    with pytest.raises(AssertionError, match="not in"):
        validate_report({**report, "model_format": "onnx"})
