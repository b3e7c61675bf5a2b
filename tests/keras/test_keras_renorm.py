"""Batch renormalization (``BatchNormalization(renorm=True)``) in Keras 3 and tf_keras files, trained without the BN
updates (the moving and renorm statistics keep their initial 0 / 1): the renorm layer is kept as stored, the plain one
after it is repaired. Truth from Keras: the model's own training-mode outputs (``training=True``: batch statistics,
renorm's r and d) on samples the calibration never saw, all in one batch."""

from __future__ import annotations

import numpy as np
import pytest

import ckptfix


def _frozen_statistics_model(keras):
    """Dense -> BN(renorm) -> relu -> Dense -> BN -> relu -> Dense; 30 steps trained with every BN in training mode
    and its statistics restored afterwards (the updates that a forgotten UPDATE_OPS never ran)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    net = keras.layers.Dense(8)(inputs)
    net = keras.layers.Activation("relu")(keras.layers.BatchNormalization(renorm=True, name="renorm_bn")(net))
    net = keras.layers.Dense(8)(net)
    net = keras.layers.Activation("relu")(keras.layers.BatchNormalization(name="plain_bn")(net))
    model = keras.Model(inputs, keras.layers.Dense(3)(net))
    rng = np.random.default_rng(2)
    data = rng.normal(1.0, 2.0, (1024, 6)).astype(np.float32)
    labels = data[:, :3].argmax(-1)
    stale = [w.numpy() for w in model.non_trainable_weights]
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, labels, batch_size=32, epochs=1, verbose=0)
    for weight, value in zip(model.non_trainable_weights, stale):
        weight.assign(value)
    return model, data, rng.normal(1.0, 2.0, (1024, 6)).astype(np.float32)


@pytest.mark.parametrize("flavour", ["keras", "tf_keras"])
def test_renorm_layer_kept_as_stored_and_the_plain_one_repaired(flavour, tmp_path):
    keras = pytest.importorskip(flavour)
    model, data, heldout = _frozen_statistics_model(keras)
    path = tmp_path / ("model.keras" if flavour == "keras" else "model.h5")
    model.save(path)
    kept = [w.numpy() for w in model.get_layer("renorm_bn").weights]

    def load(p):
        return keras.models.load_model(p, compile=False)

    truth = np.asarray(load(path)(heldout, training=True))  # Keras 3 updates the statistics of the model it runs
    notices = []
    report = ckptfix.recalibrate(path, data, batch_size=32, shuffle=False, output=tmp_path / "out" / path.name,
                                 on_notice=notices.append)
    assert any("batch renormalization (renorm=True) in renorm_bn: kept as stored" in n for n in notices), notices
    assert [layer.name for layer in report.layers] == ["plain_bn"]
    repaired = load(tmp_path / "out" / path.name)
    for weight, value in zip(repaired.get_layer("renorm_bn").weights, kept, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)

    def error(m) -> float:
        return float(np.abs(np.asarray(m(heldout, training=False)) - truth).mean() / np.abs(truth).mean())

    population = load(tmp_path / "out" / path.name)
    renorm_input = np.asarray(keras.Model(model.inputs, model.get_layer("renorm_bn").input)(data)).astype(np.float64)
    layer = population.get_layer("renorm_bn")
    layer.moving_mean.assign(renorm_input.mean(0))
    layer.moving_variance.assign(renorm_input.var(0))
    errors = {"stale": error(load(path)), "repaired": error(repaired), "population": error(population)}
    # measured (both flavours): stale 0.62, population 0.64, repaired 0.044 (plain_bn from 1,024 other samples)
    assert errors["repaired"] < 0.1, errors
    assert errors["population"] > 5 * errors["repaired"], errors
    assert errors["stale"] > 5 * errors["repaired"], errors


def test_a_model_whose_bn_layers_all_use_renorm_has_nothing_to_recalibrate(tmp_path):
    keras = pytest.importorskip("keras")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(renorm=True)(keras.layers.Dense(4)(inputs)))
    model.save(tmp_path / "model.keras")
    with pytest.raises(ckptfix.errors.NoBatchNormError, match="uses batch renormalization, kept as stored: nothing to"):
        ckptfix.recalibrate(tmp_path / "model.keras", np.ones((8, 4), np.float32), output=tmp_path / "out.keras")
    assert not (tmp_path / "out.keras").exists()
