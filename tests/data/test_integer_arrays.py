"""Issue 14 item 10: integer arrays of images (0..255) go through --preprocess like image files, with a notice;
--preprocess raw uses them as given, and a first BN layer far from its stored statistics is warned about."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import open_batches, pixels

import ckptfix
from ckptfix.errors import DataError


def test_uint8_array_is_preprocessed_like_image_files(tmp_path):
    images = pixels(5)
    opened = open_batches(images)  # preprocess="inception"
    got = np.concatenate(list(opened))
    assert opened.integer_images and got.dtype == np.float32
    np.testing.assert_allclose(got, images / 127.5 - 1, atol=1e-6)
    np.save(tmp_path / "x.npy", images.astype(np.int64))  # any integer dtype
    np.testing.assert_allclose(np.concatenate(list(open_batches(tmp_path / "x.npy"))), images / 127.5 - 1, atol=1e-6)
    raw = open_batches(images, preprocess="raw")
    np.testing.assert_array_equal(np.concatenate(list(raw)), images.astype(np.float32))
    floats = open_batches(images.astype(np.float32))  # float arrays: as given
    assert not floats.images and np.array_equal(np.concatenate(list(floats)), images)


def test_integers_outside_0_255_are_refused_by_sample(tmp_path):
    values = pixels(5).astype(np.int32)
    values[3, 0, 0, 0] = 300
    with pytest.raises(DataError, match=r"array\[3\] holds integers outside 0..255"):
        list(open_batches(values))


@pytest.fixture(scope="module")
def uint8_npy(slim_model, tmp_path_factory):
    """The seed model's 64 calibration PNGs as a uint8 .npy, and its preprocessed float calibration rows."""
    model = slim_model("seed")
    folder = tmp_path_factory.mktemp("uint8")
    pngs = sorted(model.images_dir.glob("*.png"))
    pixels_ = np.stack([tf.io.decode_png(p.read_bytes()).numpy() for p in pngs])
    np.save(folder / "pixels.npy", pixels_)
    np.save(folder / "floats.npy", np.load(model.calib)[: len(pngs)])
    return model, folder


def _cli(*args, exit_code: int = 0):
    run = subprocess.run([sys.executable, "-m", "ckptfix", *map(str, args), "--no-progress", "--json"],
                         capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert run.returncode == exit_code, run.stderr
    return json.loads(run.stdout), run.stderr


def test_cli_uint8_npy_gets_the_preset_and_says_so(uint8_npy, tmp_path):
    model, folder = uint8_npy
    as_images, stderr = _cli("recalibrate", model.prefix, folder / "pixels.npy", "-o", tmp_path / "a")
    assert "notice: integer arrays taken as 0..255 images, preprocessed with --preprocess inception: x / 127.5 - 1" \
        in stderr and "--preprocess raw uses them as given" in stderr
    assert "preprocessed unlike the training data" not in stderr
    floats, _ = _cli("recalibrate", model.prefix, folder / "floats.npy", "-o", tmp_path / "b")
    for got, want in zip(as_images["layers"], floats["layers"]):  # the same samples, the same statistics
        np.testing.assert_allclose(got["new_mean"], want["new_mean"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["new_variance"], want["new_variance"], rtol=1e-4, atol=1e-6)


def test_cli_raw_uses_the_values_and_warns_of_the_first_layer(uint8_npy, tmp_path):
    model, folder = uint8_npy  # the seed's statistics are the initial 0/1: check a repaired copy instead
    repaired, _ = _cli("recalibrate", model.prefix, folder / "floats.npy", "-o", tmp_path / "fixed")
    checkpoint = repaired["output_checkpoint"]
    fresh, stderr = _cli("diagnose", checkpoint, folder / "pixels.npy")  # preprocessed: the training inputs
    assert "preprocessed unlike the training data" not in stderr and fresh["verdict"] == "fresh"
    report, stderr = _cli("diagnose", checkpoint, folder / "pixels.npy", "--preprocess", "raw", exit_code=3)
    assert "integer arrays taken as 0..255 images, preprocessed with --preprocess raw: x, 0..255 floats" in stderr
    assert "raw uses them as given" not in stderr
    first = report["layers"][0]["name"]
    assert f"notice: the first BN layer {first} sees a mean" in stderr, stderr
    assert "preprocessed unlike the training data; check --preprocess" in stderr
    assert any("preprocessed unlike" in n for n in report["notices"])
