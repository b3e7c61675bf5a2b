"""Keras models get the same accurate sums as TF1 graphs (issue 14 item 7, :mod:`ckptfix.graph.sums`): on 32x187x96
inputs whose channel means lie hundreds of standard deviations from zero, float32 ``reduce_mean`` misses the
float64 statistics by more than 1e-3 of sqrt(var + eps); the recalibrated ones must not."""

import numpy as np

import ckptfix

MEANS = np.array([500.0, -200.0, 0.673], np.float32)
STDS = np.array([1.0, 0.5, 0.032], np.float32)


def test_keras_bn_statistics_on_large_offset_activations(tmp_path):
    import keras

    inputs = keras.Input((187, 96, 3), name="x")
    outputs = keras.layers.BatchNormalization(name="bn", epsilon=1e-3)(inputs)
    path = tmp_path / "offset.keras"
    keras.Model(inputs, outputs).save(path)
    rng = np.random.default_rng(7)
    data = (MEANS + STDS * rng.standard_normal((64, 187, 96, 3))).astype(np.float32)

    report = ckptfix.diagnose(path, data, batch_size=32, shuffle=False, agreement_samples=0)
    (layer,) = report.layers
    values = data.astype(np.float64).reshape(-1, 3)
    mean, variance = values.mean(axis=0), values.var(axis=0)  # Keras 3 BN keeps the biased variance
    scale = np.sqrt(variance + 1e-3)
    assert np.all(np.abs(np.asarray(layer.new_mean) - mean) <= 1e-3 * scale), (layer.new_mean, mean)
    np.testing.assert_allclose(np.asarray(layer.new_variance) + 1e-3, variance + 1e-3, rtol=1e-3)
