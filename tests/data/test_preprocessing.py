"""Each preset equals its documented formula (module docstring of ckptfix.data.preprocessing) on a real image
file, computed in numpy; the user's module:function runs inside the pipeline."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import batches

from ckptfix.errors import DataError


@pytest.fixture()
def photo(tmp_path):
    """A real 8x8 PNG with smooth structure (gradients plus texture), and its pixels."""
    y, x = np.mgrid[0:8, 0:8]
    image = np.stack([y * 30 + 5, x * 28 + 10, (x * y * 7 + 3 * x) % 256], -1).astype(np.uint8)
    folder = tmp_path / "photo"
    folder.mkdir()
    (folder / "photo.png").write_bytes(tf.io.encode_png(image).numpy())
    return folder, image.astype(np.float64)


def run(folder, preset, size, **options):
    return batches(folder, preprocess=preset, input_shape=(None, *size, 3), **options)[0][0]


def box2(x):
    """tf.image.resize (half-pixel centres) 8 -> 4 samples between pixel pairs: a 2x2 box mean."""
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4


def test_inception_is_slim_resize_then_scale(photo):
    folder, x = photo
    np.testing.assert_allclose(run(folder, "inception", (8, 8)), x / 127.5 - 1, atol=1e-6)
    # TF1 resize_bilinear without half-pixel centres, 8 -> 4: source pixels 0, 2, 4, 6 exactly
    np.testing.assert_allclose(run(folder, "inception", (4, 4)), x[::2, ::2] / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(run(folder, "inception", (4, 4), central_crop=0.5), x[2:6, 2:6] / 127.5 - 1, atol=1e-6)


def test_vgg_shorter_side_central_crop_mean_subtraction(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (10, 8, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(tf.io.encode_png(image).numpy())
    # input 7x7: S = round(7 * 256 / 224) = 8 = the shorter side, so no resize; crop offsets (1, 0)
    expected = image[1:8, 0:7].astype(np.float64) - [123.68, 116.78, 103.94]
    np.testing.assert_allclose(run(tmp_path, "vgg", (7, 7)), expected, atol=1e-4)
    with pytest.raises(DataError, match="drop --central-crop"):
        run(tmp_path, "vgg", (7, 7), central_crop=0.5)


def test_caffe_torch_unit_raw(photo):
    folder, x = photo
    np.testing.assert_allclose(run(folder, "caffe", (8, 8)), x[..., ::-1] - [103.939, 116.779, 123.68], atol=1e-4)
    torch = (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(run(folder, "torch", (8, 8)), torch, atol=1e-5)
    np.testing.assert_allclose(run(folder, "unit", (4, 4)), box2(x) / 255, atol=1e-6)
    np.testing.assert_allclose(run(folder, "raw", (4, 4)), box2(x), atol=1e-4)


def test_rgb_presets_need_three_channels(photo):
    folder, _ = photo
    with pytest.raises(DataError, match="works on RGB images"):
        batches(folder, preprocess="torch", input_shape=(None, 8, 8, 1))
    with pytest.raises(DataError, match="--preprocess must be one of"):
        batches(folder, preprocess="imagenet")


def test_user_function_runs_in_the_pipeline(photo, tmp_path, monkeypatch):
    folder, x = photo
    (tmp_path / "my_prep.py").write_text(
        "import tensorflow as tf\n"
        "def center(image):\n"
        "    return tf.cast(image[1:7, 2:7], tf.float32) / 100.0\n"
        "def wrong(image):\n"
        "    return tf.cast(image, tf.float32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    got = batches(folder, preprocess="my_prep:center", input_shape=(None, 6, 5, 3))[0][0]
    np.testing.assert_allclose(got, x[1:7, 2:7] / 100, atol=1e-6)
    with pytest.raises(DataError, match=r"photo.png .* gives shape \(8, 8, 3\) but the model input images:0 takes \(6, 5, 3\)"):
        batches(folder, preprocess="my_prep:wrong", input_shape=(None, 6, 5, 3))
    with pytest.raises(DataError, match="cannot import"):
        batches(folder, preprocess="no_such_module_xyz:f")
    callable_got = batches(folder, preprocess=lambda image: tf.cast(image, tf.float32) * 2, input_shape=(None, 8, 8, 3))
    np.testing.assert_allclose(callable_got[0][0], x * 2)


def test_the_inception_notice_says_whether_a_crop_is_applied():
    """'(slim Inception; --central-crop 0.875 as slim's eval)' read as if a crop were applied; none was."""
    from ckptfix.data.preprocessing import resolve_preprocessing

    default = resolve_preprocessing("inception", (None, 8, 8, 3), None, None).description
    cropped = resolve_preprocessing("inception", (None, 8, 8, 3), None, 0.875).description
    assert "no crop" in default and "central crop" not in default
    assert cropped.endswith(", central crop 0.875") and "no crop" not in cropped
