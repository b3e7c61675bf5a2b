"""Keras 3 / tf_keras models in every file format: stale -> repaired, checked against numpy on the BN inputs,
inference accuracy back to training-mode (batch-statistics) accuracy, every other weight byte-identical."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

import ckptfix
import keras_models as km
from diagnostics.schema import validate_report


def _h5_datasets(source) -> dict[str, bytes]:
    import h5py

    found = {}
    with h5py.File(source, "r") as h5:
        h5.visititems(lambda name, node: found.__setitem__(name, node[()].tobytes()) if isinstance(node, h5py.Dataset) else None)
    return found


def _stored(path, model_format) -> dict[str, bytes]:
    """Every stored weight by key, as bytes; for a .keras archive also every other member, as is."""
    if model_format == "keras":
        with zipfile.ZipFile(path) as archive:
            members = {f"member:{n}": archive.read(n) for n in archive.namelist() if n != "model.weights.h5"}
            return {**members, **_h5_datasets(io.BytesIO(archive.read("model.weights.h5")))}
    if model_format in ("h5", "weights-h5"):
        return _h5_datasets(path)
    import tensorflow as tf

    prefix = path / "variables" / "variables" if model_format == "savedmodel" else path
    reader = tf.train.load_checkpoint(str(prefix))
    values = {k: np.asarray(reader.get_tensor(k)).tobytes() for k in reader.get_variable_to_dtype_map()}
    if model_format == "savedmodel":
        values["saved_model.pb"] = (path / "saved_model.pb").read_bytes()
    return values


def _assert_only_statistics_changed(report, source, written, model_format) -> None:
    before, after = _stored(source, model_format), _stored(written, model_format)
    assert set(before) == set(after)
    changed = {key for key in before if before[key] != after[key]}
    expected = {key for layer in report.layers for key in (layer.mean_key, layer.variance_key)}
    assert changed == expected


def _numpy_statistics(inputs: np.ndarray, channel_axis: int, bessel: bool) -> tuple[np.ndarray, np.ndarray]:
    values = np.moveaxis(np.asarray(inputs, np.float64), channel_axis, -1).reshape(-1, inputs.shape[channel_axis])
    return values.mean(axis=0), values.var(axis=0, ddof=1 if bessel else 0)


def _check_against_numpy(report, bn_inputs: dict[str, tuple[np.ndarray, int]], rtol: float = 1e-4) -> None:
    """New statistics vs numpy (float64) on the BN inputs, taken from the model with every BN on the statistics
    of each batch of the pass (:func:`_taps`), as the measuring pass computes them."""
    assert {layer.name for layer in report.layers} == set(bn_inputs)
    for layer in report.layers:
        values, axis = bn_inputs[layer.name]
        mean, variance = _numpy_statistics(values, axis, layer.variance_convention == "bessel")
        np.testing.assert_allclose(layer.new_mean, mean, rtol=rtol, atol=rtol * np.sqrt(variance).max())
        np.testing.assert_allclose(layer.new_variance, variance, rtol=rtol, err_msg=layer.name)
        assert layer.count == values.size // values.shape[axis]


def _only(report, name):
    class _One:
        layers = [layer for layer in report.layers if layer.name == name]

    return _One


#: the measuring pass's batches (in data order: shuffle=False)
BATCH = 64


def _taps(model, x) -> list[np.ndarray]:
    """``model``'s outputs with every BN on the statistics of each batch of ``BATCH`` samples (``training=True``;
    frozen BN layers made trainable, since Keras runs a frozen one in inference mode even then), dropout off (rate
    0: the identity, as in inference mode): the BN inputs the measuring pass saw. Changes ``model``: a copy."""
    for layer in model._flatten_layers(include_self=False):
        if hasattr(layer, "rate") and "dropout" in type(layer).__name__.lower():
            layer.rate = 0.0
        if "BatchNormalization" in type(layer).__name__:
            layer.trainable = True
    batches = [model(x[start:start + BATCH], training=True) for start in range(0, len(x), BATCH)]
    if not isinstance(batches[0], (list, tuple)):
        return [np.concatenate([np.asarray(batch) for batch in batches])]
    return [np.concatenate([np.asarray(batch[k]) for batch in batches]) for k in range(len(batches[0]))]


def _keras3_bn_inputs(model, x) -> dict:
    keras = km.keras3()

    top = {name: model.get_layer(name) for name in ("bn1", "bn_axis1", "bn_plain")}
    values = dict(zip(top, _taps(keras.Model(model.inputs, [layer.input for layer in top.values()]), x)))
    found = {"bn1": (values["bn1"], -1), "bn_axis1": (values["bn_axis1"], 1), "bn_plain": (values["bn_plain"], -1)}
    if any(layer.name == "block" for layer in model.layers):
        block = model.get_layer("block")
        block_input = _taps(keras.Model(model.inputs, model.layers[model.layers.index(block) - 1].output), x)[0]
        inner = keras.Model(block.inputs, block.get_layer("bn2").input)
        found["block/bn2"] = (_taps(inner, block_input)[0], -1)
    return found


def _recalibrate(path, data, tmp_path, name, **options):
    """Batches of ``BATCH`` in data order: numpy checks every layer on the inputs of the same batches (:func:`_taps`)."""
    return ckptfix.recalibrate(path, data, output=tmp_path / name, batch_size=BATCH, shuffle=False, **options)


@pytest.mark.parametrize("model_format", ["keras", "weights-h5"])
def test_frozen_bn_keras3_repaired(keras_frozen, tmp_path, model_format):
    keras = km.keras3()

    source = keras_frozen.files[model_format]
    # BN frozen while fine-tuning on domain B: recomputing it for domain B is adaptation, asked for explicitly
    options = {"adapt": True} if model_format == "keras" else {"model": km.functional_keras3, "adapt": True}
    name = "fixed.keras" if model_format == "keras" else "fixed.weights.h5"
    report = _recalibrate(source, keras_frozen.calibration, tmp_path, name, **options)

    assert report.model_format == model_format
    assert keras_frozen.inference_accuracy < keras_frozen.batch_accuracy - 0.05  # stale: the repair matters
    if model_format == "keras":
        repaired = keras.saving.load_model(report.output_checkpoint)
    else:
        repaired = km.functional_keras3()
        repaired.load_weights(report.output_checkpoint)
    assert km.accuracy(repaired, *keras_frozen.held_out, training=False) >= keras_frozen.batch_accuracy - 0.02
    assert report.agreement.top1_after >= 0.98 and report.agreement.top1_before < 0.95
    assert all(layer.variance_convention == "biased" for layer in report.layers)
    _check_against_numpy(report, _keras3_bn_inputs(repaired, np.load(keras_frozen.calibration)))
    _assert_only_statistics_changed(report, source, tmp_path / name, model_format)
    validate_report(report.to_dict())


def test_skipped_updates_keras3_weights_and_tf_checkpoint(keras_skipped, tmp_path):
    import tensorflow as tf

    keras = km.keras3()

    inspected = ckptfix.inspect(keras_skipped.files["weights-h5"], model=km.flat_keras3)
    assert inspected.flagged == ["bn1", "bn_axis1", "bn_plain"]  # moving statistics still 0 / 1
    for model_format in ("weights-h5", "tf-checkpoint"):
        name = "fixed.weights.h5" if model_format == "weights-h5" else "fixed-ckpt"
        report = _recalibrate(keras_skipped.files[model_format], keras_skipped.calibration, tmp_path, name,
                              model="keras_models:flat_keras3")
        assert report.model_format == model_format
        repaired = km.flat_keras3()
        if model_format == "weights-h5":
            repaired.load_weights(report.output_checkpoint)
            source, written = keras_skipped.files[model_format], tmp_path / name
        else:
            tf.train.Checkpoint(model=repaired).read(report.output_checkpoint).assert_existing_objects_matched()
            source, written = keras_skipped.files[model_format], tmp_path / name / "ckpt-1"
            assert (tmp_path / name / "checkpoint").is_file()
        assert keras_skipped.inference_accuracy < 0.7 < keras_skipped.batch_accuracy
        assert km.accuracy(repaired, *keras_skipped.held_out, training=False) >= keras_skipped.batch_accuracy - 0.02
        _check_against_numpy(report, _keras3_bn_inputs(repaired, np.load(keras_skipped.calibration)))
        _assert_only_statistics_changed(report, source, written, model_format)
    assert isinstance(repaired, keras.Model)


def _xception_bn_inputs(tf_keras, model, x) -> dict:
    layers = [layer for layer in model.layers if layer.name.endswith("_bn")]
    outputs = _taps(tf_keras.Model(model.inputs, [layer.input for layer in layers]), x)
    return {layer.name: (values, -1) for layer, values in zip(layers, outputs)}


@pytest.mark.parametrize("model_format", ["h5", "tf-checkpoint", "savedmodel", "weights-h5"])
def test_keras2_mini_xception_repaired(keras2_xception, tmp_path, model_format):
    tf_keras = km.keras2()

    source = keras2_xception.files[model_format]
    options = {"model": km.xception_tf_keras} if model_format in ("tf-checkpoint", "weights-h5") else {}
    name = {"h5": "fixed.h5", "tf-checkpoint": "fixed-weights", "savedmodel": "fixed-savedmodel",
            "weights-h5": "fixed.weights.h5"}[model_format]
    report = _recalibrate(source, keras2_xception.calibration, tmp_path, name, **options)

    assert report.model_format == model_format
    conventions = {layer.name: layer.variance_convention for layer in report.layers}
    assert conventions == {"stem_bn": "bessel", "shortcut_bn": "bessel", "sep1_bn": "bessel", "sep2_bn": "bessel",
                           "fc_bn": "biased"}  # tf_keras' fused kernel on 4-D inputs, non-fused on the dense one
    if model_format == "tf-checkpoint":
        repaired = km.xception_tf_keras()
        repaired.load_weights(report.output_checkpoint).assert_existing_objects_matched()
        written = tmp_path / name / "ckpt"
    elif model_format == "weights-h5":
        repaired = km.xception_tf_keras()
        repaired.load_weights(report.output_checkpoint)
        written = tmp_path / name
    else:
        repaired = tf_keras.models.load_model(report.output_checkpoint)
        written = tmp_path / name
    assert keras2_xception.inference_accuracy < keras2_xception.batch_accuracy - 0.05
    assert km.accuracy(repaired, *keras2_xception.held_out, training=False) >= keras2_xception.batch_accuracy - 0.02
    _check_against_numpy(report, _xception_bn_inputs(tf_keras, repaired, np.load(keras2_xception.calibration)))
    _assert_only_statistics_changed(report, source if model_format != "tf-checkpoint" else source, written, model_format)


def test_diagnose_and_inspect_keras_archive(keras_frozen, tmp_path):
    keras = km.keras3()

    diagnosis = ckptfix.diagnose(keras_frozen.files["keras"], keras_frozen.calibration, batch_size=48, shuffle=True)
    assert diagnosis.stale_layers and diagnosis.verdict == "differs" and diagnosis.model_format == "keras"
    assert {diagnosis.layer_label(layer) for layer in diagnosis.layers} == {"frozen"}  # trained against: never stale
    assert diagnosis.evidence == [] and "adapt=True" in diagnosis.gate.reasons[0]
    # bn1's input depends on no BN: pooled over 6 batches (the last one merged) it equals numpy on all samples
    model = keras.saving.load_model(keras_frozen.files["keras"])
    first = _keras3_bn_inputs(model, np.load(keras_frozen.calibration))["bn1"]
    _check_against_numpy(_only(diagnosis, "bn1"), {"bn1": first}, rtol=1e-5)
    validate_report(diagnosis.to_dict())
    inspected = ckptfix.inspect(keras_frozen.files["keras"])
    assert [layer.name for layer in inspected.layers] == ["bn1", "block/bn2", "bn_axis1", "bn_plain"]
    assert inspected.flagged == []  # trained statistics, just from the wrong domain: only diagnose can tell
    assert inspected.to_dict()["model_format"] == "keras"
    validate_report(inspected.to_dict())
    repaired = _recalibrate(keras_frozen.files["keras"], keras_frozen.calibration, tmp_path, "fixed.keras", adapt=True)
    assert not ckptfix.diagnose(repaired.output_checkpoint, keras_frozen.calibration, batch_size=64).stale
    against = ckptfix.inspect(repaired.output_checkpoint, against=keras_frozen.files["keras"])
    assert against.flagged == []
    same = ckptfix.inspect(keras_frozen.files["keras"], against=keras_frozen.files["keras"])
    assert all("same-as-against" in layer.flags for layer in same.layers)


def test_exclude_leaves_a_layer_untouched(keras_frozen, tmp_path):
    source = keras_frozen.files["keras"]
    report = _recalibrate(source, keras_frozen.calibration, tmp_path, "partial.keras", exclude="axis1|plain", adapt=True)
    assert [layer.name for layer in report.layers] == ["bn1", "block/bn2"]
    assert report.untouched_layers == ["bn_axis1", "bn_plain"]
    _assert_only_statistics_changed(report, source, tmp_path / "partial.keras", "keras")
