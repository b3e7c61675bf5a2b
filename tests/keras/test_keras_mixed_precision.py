"""Keras models trained under the ``mixed_float16`` policy (float16 compute, float32 variables), saved with
their BN statistics stale (0 / 1, as when the updates never ran). Truth from outside ckptfix: numpy's float64
moments of the float16 BN inputs tapped from the model in its own training mode, batch by batch; held-out
accuracy in inference mode against the model's own training-mode accuracy."""

from __future__ import annotations

import numpy as np
import pytest

import ckptfix
import keras_models as km

BATCH, LAYERS = 64, ("bn_a", "bn_b")


def _mixed_model(keras):
    """conv -> BN -> relu -> conv -> BN -> relu -> pooling -> dense (float32 logits), under ``mixed_float16``."""
    keras.utils.set_random_seed(3)
    layers = keras.layers
    inputs = keras.Input((km.SIZE, km.SIZE, 3), name="images")
    x = layers.Conv2D(8, 3, padding="same", name="conv_a")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(name="bn_a")(x))
    x = layers.Conv2D(8, 3, padding="same", name="conv_b")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn_b")(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(km.CLASSES, name="logits", dtype="float32")(x))


@pytest.fixture(scope="module", params=["keras3", "tf_keras"])
def mixed(request, tmp_path_factory):
    keras = km.keras3() if request.param == "keras3" else km.keras2()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _mixed_model(keras)
        x, y = km.images(1024, km.DOMAIN_B, seed=1)
        km.train(keras, model, x, y, epochs=3)
        for name in LAYERS:  # stale: the statistics the updates would have moved, as never updated
            layer = model.get_layer(name)
            layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
            layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
        path = tmp_path_factory.mktemp("mixed") / ("stale.keras" if request.param == "keras3" else "stale.h5")
        model.save(path)
        heldout = km.images(512, km.DOMAIN_B, seed=2)
        training_accuracy = km.accuracy(model, *heldout, training=True)  # batch statistics; moves a copy's only
    finally:
        keras.mixed_precision.set_global_policy(previous)
    calibration, _ = km.images(512, km.DOMAIN_B, seed=4)
    return keras, path, calibration, heldout, training_accuracy


def _load(keras, path):
    return keras.models.load_model(path, compile=False)  # the saved layers carry their own dtype policy


def test_mixed_float16_statistics_pooled_in_float64_from_the_float16_inputs(mixed, tmp_path):
    keras, path, calibration, heldout, training_accuracy = mixed
    output = tmp_path / path.name
    report = ckptfix.recalibrate(path, calibration, batch_size=BATCH, shuffle=False, output=output)
    assert [layer.name for layer in report.layers] == list(LAYERS)

    stale, repaired = _load(keras, path), _load(keras, output)
    assert all(repaired.get_layer(n).moving_variance.dtype == "float32" for n in LAYERS)  # stored dtype kept
    assert repaired.get_layer("bn_a").compute_dtype == "float16"
    tap = keras.Model(stale.inputs, [stale.get_layer(name).input for name in LAYERS])  # a copy: training moves it
    taps = [tap(calibration[start:start + BATCH], training=True) for start in range(0, len(calibration), BATCH)]
    for k, layer in enumerate(report.layers):
        values = np.concatenate([np.asarray(t[k], np.float64) for t in taps]).reshape(-1, 8)
        assert np.asarray(taps[0][k]).dtype == np.float16  # what the measuring pass pools: float16 activations
        ddof = 1 if layer.variance_convention == "bessel" else 0
        # float16 activations: the float32 batch moments the model normalises with differ from numpy's float64
        # ones by float16 rounding (measured: ~1e-4 relative)
        np.testing.assert_allclose(layer.new_mean, values.mean(0), rtol=2e-3, atol=2e-3 * values.std(0).max())
        np.testing.assert_allclose(layer.new_variance, values.var(0, ddof=ddof), rtol=2e-3)

    before = km.accuracy(_load(keras, path), *heldout, training=False)
    after = km.accuracy(repaired, *heldout, training=False)
    assert before < training_accuracy - 0.2, (before, training_accuracy)  # stale: the repair matters
    assert after >= training_accuracy - 0.02, (after, training_accuracy)
