"""Keras models with several unnamed inputs (issue 32 item 3, deepcut's case): the data is keyed the way users see
the inputs, by the Input layers' names (``model.summary()``: Keras 3 ``input_layer``, ``input_layer_1``; tf_keras
``input_1``...), by the tensors' names, or by position (``np.savez(path, x0, x1)`` names them ``arr_0``, ``arr_1``),
in Keras 3 and tf_keras files; a wrong key gets an error that reads as a sentence. Truth: each branch's BN input
is a plain input here, so its statistics are numpy's over the array fed to it."""

from __future__ import annotations

import numpy as np
import pytest

import ckptfix
from ckptfix.errors import DataError
import keras_models as km


def _two_inputs(keras):
    """Input (8,) -> BN and Input (5,) -> BN, concatenated into a Dense; neither Input named."""
    keras.utils.set_random_seed(0)
    chars, types = keras.Input((8,)), keras.Input((5,))
    a = keras.layers.BatchNormalization(name="char_bn")(chars)
    b = keras.layers.BatchNormalization(name="type_bn")(types)
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Concatenate()([a, b]))
    return keras.Model([chars, types], out)


def _input_layer_names(model) -> list[str]:
    """What ``model.summary()`` calls the inputs: the InputLayer names, in the model's input order."""
    return [tensor._keras_history[0].name for tensor in model.inputs]


@pytest.fixture(scope="module", params=["keras", "tf_keras"])
def saved(request, tmp_path_factory):
    keras = pytest.importorskip(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model = _two_inputs(keras)
    path = folder / ("model.keras" if request.param == "keras" else "model.h5")
    model.save(path)
    rng = np.random.default_rng(1)
    arrays = rng.normal(2.0, 3.0, (64, 8)).astype(np.float32), rng.normal(-1.0, 0.5, (64, 5)).astype(np.float32)
    return path, _input_layer_names(model), arrays


def _check(report, arrays) -> None:
    by_name = {layer.name: layer for layer in report.layers}
    for name, values in zip(("char_bn", "type_bn"), arrays):
        np.testing.assert_allclose(by_name[name].new_mean, values.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(by_name[name].new_variance, values.astype(np.float64).var(0), rtol=1e-5)


@pytest.mark.parametrize("keyed_by", ["layer names", "positions", "dict by layer names"])
def test_inputs_keyed_as_users_see_them(saved, keyed_by, tmp_path):
    path, layer_names, arrays = saved
    if keyed_by == "positions":
        np.savez(tmp_path / "data.npz", *arrays)
        data = tmp_path / "data.npz"
    elif keyed_by == "dict by layer names":
        data = dict(zip(layer_names, arrays))
    else:
        np.savez(tmp_path / "data.npz", **dict(zip(layer_names, arrays)))
        data = tmp_path / "data.npz"
    report = ckptfix.diagnose(path, data, batch_size=32, shuffle=False)
    assert report.input_tensors == layer_names and report.num_samples == 64
    _check(report, arrays)


def test_a_model_built_by_the_users_function(tmp_path):
    """deepcut's route: a weights-only file and ``--model`` building the architecture in the ckptfix process, where
    Keras 3 names the input tensors ``keras_tensor_N`` and the Input layers ``input_layer_N``: both key the data."""
    keras = km.keras3()  # Keras 3's names (skips on TensorFlow 2.15, whose keras is Keras 2)

    model = _two_inputs(keras)
    model.save_weights(tmp_path / "model.weights.h5")
    rng = np.random.default_rng(2)
    arrays = rng.normal(2.0, 3.0, (64, 8)).astype(np.float32), rng.normal(-1.0, 0.5, (64, 5)).astype(np.float32)
    built = []

    def builder():
        built.append(_two_inputs(keras))
        return built[-1]

    np.savez(tmp_path / "positions.npz", *arrays)
    keras.backend.clear_session()  # the names a fresh process gives (what the user's model.summary() shows)
    report = ckptfix.diagnose(tmp_path / "model.weights.h5", tmp_path / "positions.npz", model=builder, batch_size=32)
    assert report.input_tensors == ["input_layer", "input_layer_1"] == _input_layer_names(built[-1])
    _check(report, arrays)
    for names in (["input_layer", "input_layer_1"], ["keras_tensor", "keras_tensor_1"]):
        np.savez(tmp_path / "named.npz", **dict(zip(names, arrays)))
        keras.backend.clear_session()
        _check(ckptfix.diagnose(tmp_path / "model.weights.h5", tmp_path / "named.npz", model=builder, batch_size=32), arrays)
        assert [t.name for t in built[-1].inputs] == ["keras_tensor", "keras_tensor_1"]


def test_wrong_keys_are_named_in_a_sentence(saved, tmp_path):
    path, layer_names, arrays = saved
    np.savez(tmp_path / "data.npz", chars=arrays[0], types=arrays[1])
    with pytest.raises(DataError) as raised:
        ckptfix.diagnose(path, tmp_path / "data.npz")
    message = str(raised.value)
    assert message == (
        f"{tmp_path / 'data.npz'} has no array for the model's input {', '.join(layer_names)}: its arrays are named "
        f"chars, types. Name one array after each input ({', '.join(layer_names)}), or give them in the model's "
        "input order as np.savez names them (arr_0, arr_1)."), message
