"""A subclassed Keras 3 model whose BN layer is synchronized and frozen (trainable=False): found through
its attributes, measured on batch statistics anyway, checked against numpy on the BN input."""

from __future__ import annotations

import numpy as np

import ckptfix
import keras_models as km


def _subclassed():
    keras = km.keras3()  # synchronized=True: Keras 3's BatchNormalization

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="net")
            self.conv = keras.layers.Conv2D(8, 3, padding="same", name="conv")
            self.bn = keras.layers.BatchNormalization(synchronized=True, name="bn")
            self.bn.trainable = False
            self.head = keras.layers.Dense(km.CLASSES, name="head")

        def call(self, x, training=None):
            x = keras.ops.relu(self.bn(self.conv(x), training=training))
            return self.head(keras.ops.mean(x, axis=(1, 2)))

    keras.utils.set_random_seed(0)
    model = Net()
    model(np.zeros((1, km.SIZE, km.SIZE, 3), np.float32))
    return model


def test_subclassed_synchronized_frozen_bn(tmp_path):
    model = _subclassed()
    model.save_weights(tmp_path / "net.weights.h5")
    x = km.images(200, km.DOMAIN_B, 4)[0]
    report = ckptfix.recalibrate(tmp_path / "net.weights.h5", x, model=_subclassed, batch_size=64, shuffle=False,
                                 output=tmp_path / "fixed.weights.h5", adapt=True)  # frozen while training: adapt
    assert report.layers[0].frozen
    assert [layer.name for layer in report.layers] == ["bn"] and report.num_samples == 200
    conv_output = np.asarray(model.conv(x), np.float64).reshape(-1, 8)
    np.testing.assert_allclose(report.layers[0].new_mean, conv_output.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(report.layers[0].new_variance, conv_output.var(0), rtol=1e-5)
    assert report.agreement.top1_after >= 0.95
    repaired = _subclassed()
    repaired.load_weights(tmp_path / "fixed.weights.h5")
    np.testing.assert_array_equal(repaired.bn.moving_variance.numpy(), report.layers[0].new_variance.astype(np.float32))
    assert repaired.bn.trainable is False
    km.batch_statistics_accuracy(model, x, np.zeros(len(x), np.int64))  # patches and restores bn.call
    assert "call" not in model.bn.__dict__ and np.all(model.bn.moving_mean.numpy() == 0)  # nothing left behind


def test_keras2_h5_loaded_into_keras3_keeps_keras2_conventions(tmp_path, monkeypatch):
    """Without tf_keras, a Keras 2-era .h5 is loaded by Keras 3's legacy loader; the variance convention
    still follows what tf.keras 2 ran: fused (Bessel) for the conv BN, biased for the dense BN."""
    keras = km.keras3()
    import tf_keras

    from ckptfix import compat

    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((km.SIZE, km.SIZE, 3))
    x = tf_keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    x = tf_keras.layers.BatchNormalization(name="conv_bn")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    x = tf_keras.layers.BatchNormalization(name="dense_bn")(tf_keras.layers.Dense(6, name="fc")(x))
    tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="logits")(x)).save(tmp_path / "keras2.h5")

    monkeypatch.setattr(compat, "keras2_name", lambda: None)
    x = km.images(128, km.DOMAIN_B, 5)[0]
    report = ckptfix.recalibrate(tmp_path / "keras2.h5", x, batch_size=64, output=tmp_path / "fixed.h5")
    conventions = {layer.name: (layer.kind, layer.variance_convention) for layer in report.layers}
    assert conventions == {"conv_bn": ("fused", "bessel"), "dense_bn": ("non-fused", "biased")}
    model = keras.saving.load_model(tmp_path / "fixed.h5")
    conv = np.asarray(model.get_layer("conv")(x), np.float64).reshape(-1, 8)
    np.testing.assert_allclose(report.layers[0].new_variance, conv.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_array_equal(model.get_layer("conv_bn").moving_variance.numpy(),
                                  report.layers[0].new_variance.astype(np.float32))


def test_two_input_model_takes_npz_keyed_by_input_names(tmp_path):
    """Several inputs: ``.npz`` arrays named as the Keras inputs; each branch's BN measured on its own input."""
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((km.SIZE, km.SIZE, 3), name="image")
    extra = keras.Input((5,), name="extra")
    a = keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization(name="image_bn")(image))
    b = keras.layers.BatchNormalization(name="extra_bn")(extra)
    model = keras.Model([image, extra], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    model.save(tmp_path / "two.keras")
    images = km.images(96, km.DOMAIN_B, 6)[0]
    extras = np.random.default_rng(0).normal(3.0, 2.0, (96, 5)).astype(np.float32)
    np.savez(tmp_path / "calibration.npz", image=images, extra=extras)

    report = ckptfix.recalibrate(tmp_path / "two.keras", tmp_path / "calibration.npz", batch_size=32,
                                 output=tmp_path / "fixed.keras")
    assert report.input_tensor == "image,extra" and report.input_tensors == ["image", "extra"] and report.num_samples == 96
    by_name = {layer.name: layer for layer in report.layers}
    np.testing.assert_allclose(by_name["extra_bn"].new_mean, extras.astype(np.float64).mean(0), rtol=1e-5)
    np.testing.assert_allclose(by_name["extra_bn"].new_variance, extras.astype(np.float64).var(0), rtol=1e-5)
    pixels = images.astype(np.float64).reshape(-1, 3)
    # the image BN is 4-D: Keras 2 (TensorFlow 2.15's keras) runs it fused, with the Bessel-corrected variance
    ddof = 1 if keras.__version__.startswith("2.") else 0
    np.testing.assert_allclose(by_name["image_bn"].new_variance, pixels.var(0, ddof=ddof), rtol=1e-5)
    assert report.agreement.top1_after > report.agreement.top1_before
