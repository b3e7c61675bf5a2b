"""Keras files with custom layers (issue 24 items 1, 2): the classes supplied with ``--import`` (API
``custom_objects=``), or the architecture with ``--model`` on a full-model ``.h5``; the statistics checked
against numpy in float64 on the BN inputs, every other dataset byte-identical, the CLI through subprocesses."""

from __future__ import annotations

import numpy as np
import pytest

import ckptfix
import custom_layers as cl
import keras_models as km
from ckptfix.errors import CheckpointError
from test_keras_cli_and_errors import run_cli
from test_keras_formats import _assert_only_statistics_changed, _numpy_statistics

BATCH = 8


@pytest.fixture(scope="module")
def custom_h5(tmp_path_factory):
    """The model saved as a full-model .h5 (stale: BN statistics at their initial 0 / 1) and calibration data."""
    folder = tmp_path_factory.mktemp("custom_h5")
    path, data = folder / "custom.h5", folder / "calibration.npy"
    cl.build_model().save(path)
    np.save(data, cl.sequences(32, seed=1))
    return path, data


def _reference(path, data: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """float64 mean / variance of each BN input over the same batches, every BN on batch statistics."""
    tf_keras = km.keras2()

    model = tf_keras.models.load_model(path, compile=False, custom_objects=cl.CUSTOM_OBJECTS)
    layers = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    taps = tf_keras.Model(model.inputs, [layer.input for layer in layers])
    seen = [np.concatenate(values) for values in zip(*(
        [np.asarray(out) for out in taps(data[k:k + BATCH], training=True)] for k in range(0, len(data), BATCH)))]
    return {layer.name: _numpy_statistics(values, -1, layer.fused) for layer, values in zip(layers, seen)}


def _check(report, path, data_file) -> None:
    reference = _reference(path, np.load(data_file))
    assert [layer.name for layer in report.layers] == ["bn_conv", "bn_seq"]
    for layer in report.layers:
        mean, variance = reference[layer.name]
        scale = variance + layer.epsilon
        assert np.max(np.abs(layer.new_mean - mean) / np.sqrt(scale)) < 1e-5, layer.name
        assert np.max(np.abs(layer.new_variance - variance) / scale) < 1e-5, layer.name


@pytest.mark.subprocess
def test_unknown_custom_layer_names_the_class_and_the_option(custom_h5, tmp_path):
    path, data = custom_h5
    refused = run_cli("recalibrate", path, data, "-o", tmp_path / "x.h5", "--no-progress")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "unknown layer class Squeeze" in refused.stderr and "--import MODULE" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2
    with pytest.raises(CheckpointError, match="custom_objects="):
        ckptfix.inspect(path)
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.subprocess
def test_import_supplies_the_custom_layer(custom_h5, tmp_path):
    path, data = custom_h5
    fixed = tmp_path / "fixed.h5"
    done = run_cli("recalibrate", path, data, "--import", "custom_layers", "-o", fixed, "--batch-size", BATCH,
                   "--no-shuffle", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = ckptfix.diagnose(fixed, data, custom_objects="custom_layers:CUSTOM_OBJECTS", batch_size=BATCH, shuffle=False)
    assert not report.stale
    again = ckptfix.recalibrate(path, data, custom_objects=cl.CUSTOM_OBJECTS, batch_size=BATCH, shuffle=False,
                                output=tmp_path / "api.h5")
    _check(again, path, data)
    _assert_only_statistics_changed(again, path, tmp_path / "api.h5", "h5")


@pytest.mark.subprocess
def test_model_on_a_full_model_h5_builds_the_architecture_and_takes_the_weights(custom_h5, tmp_path):
    """Before issue 24, --model was dropped for a file with a model_config: the load failed on the custom class."""
    path, data = custom_h5
    fixed = tmp_path / "fixed.h5"
    done = run_cli("recalibrate", path, data, "--model", "custom_layers:build_model", "-o", fixed,
                   "--batch-size", BATCH, "--no-shuffle", "--no-progress", "--report", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    report = ckptfix.recalibrate(path, data, model=cl.build_model, batch_size=BATCH, shuffle=False,
                                 output=tmp_path / "api.h5")
    _check(report, path, data)
    _assert_only_statistics_changed(report, path, tmp_path / "api.h5", "h5")
    assert fixed.read_bytes() == (tmp_path / "api.h5").read_bytes()


def test_import_is_refused_where_no_keras_class_is_loaded(tmp_path):
    from ckptfix.errors import CkptfixError

    graph = tmp_path / "model.pb"
    graph.write_bytes(b"")
    with pytest.raises(CkptfixError, match="custom_objects applies to Keras files"):
        ckptfix.inspect(graph, custom_objects="custom_layers")


@pytest.mark.subprocess
def test_agreement_on_a_sequence_model_with_two_outputs_counts_frames_per_output(custom_h5, tmp_path):
    """Issue 24 item 3: per-frame figures are said to be per frame, each output is compared and named, and
    --output-tensor picks one output."""
    import json

    from diagnostics.schema import validate_report

    path, data = custom_h5
    samples, frames = 32, cl.FRAMES - 2  # the valid convolution drops two frames
    done = run_cli("diagnose", path, data, "--import", "custom_layers", "--batch-size", BATCH, "--no-shuffle",
                   "--no-progress", "--report", tmp_path / "r.json")
    assert done.returncode == 3, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    validate_report(report)
    agreement = report["agreement"]
    assert agreement["unit"] == "frame" and agreement["num_compared"] == samples * frames
    assert [one["output_tensor"] for one in agreement["outputs"]] == ["tags", "roots"]
    assert agreement["top1_after"] == min(one["top1_after"] for one in agreement["outputs"])
    assert f"on {samples * frames:,} frames ({samples} samples) of each of 2 outputs" in done.stdout
    assert f"of {samples} samples" not in done.stdout

    one = ckptfix.diagnose(path, data, custom_objects=cl.CUSTOM_OBJECTS, batch_size=BATCH, shuffle=False,
                           output_tensor="roots")
    assert one.agreement.output_tensor == "roots" and not one.agreement.outputs
    assert one.agreement.to_dict() == agreement["outputs"][1]
    with pytest.raises(ckptfix.errors.GraphError, match="tags, roots"):
        ckptfix.diagnose(path, data, custom_objects=cl.CUSTOM_OBJECTS, output_tensor="logits")


def test_keras3_archive_with_a_custom_layer(tmp_path):
    path, data = tmp_path / "twice.keras", cl.sequences(16, seed=2)[:, 0, :4, 0]
    cl.keras3_model().save(path)
    with pytest.raises(CheckpointError, match="unknown layer class Twice .* custom_objects="):
        ckptfix.inspect(path)
    report = ckptfix.recalibrate(path, data, custom_objects="custom_layers:KERAS3_OBJECTS", batch_size=8,
                                 shuffle=False, output=tmp_path / "fixed.keras")
    _, variance = _numpy_statistics(np.asarray(data, np.float64) @ _dense_kernel(path), -1, False)
    np.testing.assert_allclose(report.layers[0].new_variance, variance, rtol=1e-5)
    assert report.agreement.output_tensor == "twice"
    assert report.agreement.relative_error_after < report.agreement.relative_error_before


def _dense_kernel(path) -> np.ndarray:
    keras = km.keras3()

    model = keras.saving.load_model(path, custom_objects=cl.KERAS3_OBJECTS)
    (dense,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    return np.asarray(dense.kernel, np.float64)
