"""Keras formats through real `ckptfix` subprocesses, and the errors a user can meet: safe mode and Lambda
layers, a Keras 3 export without the Keras model, files without an architecture, bad outputs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptfix
import forked
import keras_models as km
from ckptfix.errors import CkptfixError, OutputError
from diagnostics.schema import validate_report

pytestmark = pytest.mark.subprocess  # each test starts processes

HERE = Path(__file__).parent


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(HERE)])}
    return forked.run([sys.executable, "-m", "ckptfix", *map(str, args)], timeout=300, env=env)


def _digest(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_cli_recalibrate_and_diagnose_keras_archive(keras_frozen, tmp_path):
    source = keras_frozen.files["keras"]
    before = _digest(source)
    diagnosed = run_cli("diagnose", source, keras_frozen.calibration, "--json", "--no-progress")
    # BN frozen while fine-tuning on another domain: drift, but no evidence of a training bug -> "differs", exit 0
    assert diagnosed.returncode == 0 and json.loads(diagnosed.stdout)["verdict"] == "differs", diagnosed.stderr
    assert json.loads(diagnosed.stdout)["model_format"] == "keras"
    assert {layer["frozen"] for layer in json.loads(diagnosed.stdout)["layers"]} == {True}

    output = tmp_path / "fixed.keras"
    refused = run_cli("recalibrate", source, keras_frozen.calibration, "-o", output, "--no-progress")
    assert refused.returncode == 5 and "frozen while training" in refused.stderr and "--adapt" in refused.stderr
    assert not output.exists()
    result = run_cli("recalibrate", source, keras_frozen.calibration, "-o", output, "--report", tmp_path / "r.json",
                     "--adapt")
    assert result.returncode == 0, result.stderr
    assert "bn1" in result.stdout and "block/bn2" in result.stdout and f"wrote {output}" in result.stdout
    assert "Traceback" not in result.stderr and "I0000" not in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    validate_report(report)
    assert report["layers"][0]["mean_key"] == "layers/batch_normalization/vars/2"
    assert _digest(source) == before  # the input is untouched
    with pytest.raises(OutputError, match="overwrite=True"):
        ckptfix.recalibrate(source, keras_frozen.calibration, output=output)


def test_cli_weights_only_file_takes_model_or_architecture(keras_skipped, keras_frozen, tmp_path):
    source = keras_skipped.files["tf-checkpoint"]
    with pytest.raises(CkptfixError, match="model=package.module:function"):
        ckptfix.recalibrate(source, keras_skipped.calibration, output=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    result = run_cli("recalibrate", source.parent, keras_skipped.calibration, "-o", tmp_path / "b",
                     "--model", "keras_models:flat_keras3", "--model-format", "tf-checkpoint", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b" / "ckpt-1.index").is_file()
    # --architecture: the frozen model's .keras file describes the same nested architecture
    weights = keras_frozen.files["weights-h5"]
    report = ckptfix.recalibrate(weights, keras_frozen.calibration, output=tmp_path / "c.weights.h5",
                                 architecture=keras_frozen.files["keras"], adapt=True)
    assert report.model_format == "weights-h5" and (tmp_path / "c.weights.h5").is_file()


@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("lambda")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((km.SIZE, km.SIZE, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0 - 1.0)(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    path = folder / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    data = folder / "data.npy"
    np.save(data, km.images(64)[0])
    return path, data


def test_safe_mode_refuses_lambda_without_unsafe(lambda_model, tmp_path):
    path, data = lambda_model
    with pytest.raises(CkptfixError, match="unsafe=True"):
        ckptfix.recalibrate(path, data, output=tmp_path / "x.keras")
    assert not (tmp_path / "x.keras").exists()
    refused = run_cli("recalibrate", path, data, "-o", tmp_path / "y.keras")
    assert refused.returncode == 1 and "--unsafe" in refused.stderr and "Traceback" not in refused.stderr
    report = ckptfix.recalibrate(path, data, output=tmp_path / "z.keras", unsafe=True)
    assert Path(report.output_checkpoint).is_file()


def test_keras3_savedmodels(keras_skipped, tmp_path):
    """model.export() keeps no Keras model: repaired at graph level (tests/saved_model). tf.saved_model.save(model)
    keeps the model's object graph: repaired with --model, only the statistics tensors changed."""
    import tensorflow as tf

    keras = km.keras3()
    model = km.flat_keras3()
    model.load_weights(keras_skipped.files["weights-h5"])
    model.export(str(tmp_path / "exported"))
    exported = ckptfix.recalibrate(tmp_path / "exported", keras_skipped.calibration, output=tmp_path / "out")
    assert exported.model_format == "savedmodel-graph" and (tmp_path / "out" / "saved_model.pb").is_file()

    tf.saved_model.save(model, str(tmp_path / "saved"))
    report = ckptfix.recalibrate(tmp_path / "saved", keras_skipped.calibration, model=km.flat_keras3,
                                 output=tmp_path / "fixed")
    reader = tf.train.load_checkpoint(str(tmp_path / "fixed" / "variables" / "variables"))
    for layer in report.layers:
        np.testing.assert_array_equal(reader.get_tensor(layer.variance_key), layer.new_variance.astype(np.float32))
    assert isinstance(model, keras.Model) and tf.saved_model.load(str(tmp_path / "fixed")) is not None


def test_output_must_not_be_the_input(keras_frozen, keras2_xception, tmp_path):
    source = keras_frozen.files["keras"]
    before = _digest(source)
    with pytest.raises(OutputError, match="input"):
        ckptfix.recalibrate(source, keras_frozen.calibration, output=source, overwrite=True)
    with pytest.raises(OutputError, match="input"):
        ckptfix.recalibrate(keras2_xception.files["savedmodel"], keras2_xception.calibration,
                            output=keras2_xception.files["savedmodel"] / "inner", overwrite=True)
    with pytest.raises(OutputError, match=r"\*\.keras"):
        ckptfix.recalibrate(source, keras_frozen.calibration, output=tmp_path / "fixed.h5")
    assert _digest(source) == before
    with pytest.raises(CkptfixError, match="training_flag"):
        ckptfix.recalibrate(source, keras_frozen.calibration, training_flag="is_training")
    with pytest.raises(CkptfixError, match="model_format must be one of"):
        ckptfix.recalibrate(source, keras_frozen.calibration, model_format="onnx")


def test_safe_mode_checks_keras2_files_itself(tmp_path):
    """tf_keras' .h5 and SavedModel loaders unmarshal a Lambda's bytecode even with safe_mode=True: ckptfix
    refuses such files itself, before loading, unless unsafe."""
    tf_keras = km.keras2()

    inputs = tf_keras.Input((km.SIZE, km.SIZE, 3))
    x = tf_keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = tf_keras.layers.BatchNormalization()(tf_keras.layers.Conv2D(4, 3)(x))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(tf_keras.layers.GlobalAveragePooling2D()(x)))
    model.save(tmp_path / "lambda.h5")
    model.save(tmp_path / "lambda_savedmodel", save_format="tf")
    data = km.images(64)[0]
    for path in (tmp_path / "lambda.h5", tmp_path / "lambda_savedmodel"):
        with pytest.raises(CkptfixError, match="unsafe=True"):
            ckptfix.recalibrate(path, data, output=tmp_path / f"refused-{path.name}")
        assert not (tmp_path / f"refused-{path.name}").exists()
    report = ckptfix.recalibrate(tmp_path / "lambda.h5", data, output=tmp_path / "fixed.h5", unsafe=True)
    assert report.model_format == "h5" and (tmp_path / "fixed.h5").is_file()


def test_tf_keras_archive(keras2_xception, tmp_path):
    """Keras 2's own .keras archive (tf_keras; tf.keras on TensorFlow 2.15): loaded with Keras 2, paths from
    Keras 2's saver, only statistics changed."""
    tf_keras = km.keras2()

    from test_keras_formats import _assert_only_statistics_changed

    tf_keras.models.load_model(keras2_xception.files["h5"]).save(tmp_path / "keras2.keras")
    report = ckptfix.recalibrate(tmp_path / "keras2.keras", keras2_xception.calibration, output=tmp_path / "out.keras")
    assert report.model_format == "keras" and report.layers[0].variance_convention == "bessel"
    _assert_only_statistics_changed(report, tmp_path / "keras2.keras", tmp_path / "out.keras", "keras")
    repaired = tf_keras.models.load_model(tmp_path / "out.keras")
    assert km.accuracy(repaired, *keras2_xception.held_out, training=False) >= keras2_xception.batch_accuracy - 0.02
