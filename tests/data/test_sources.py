"""Calibration batches from arrays, image folders and iterables; bad data answered with DataError."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ckptfix.data import open_calibration_data
from ckptfix.errors import DataError

SHAPE = (None, 6, 5, 3)


def batches(data, **options) -> list[np.ndarray]:
    settings = dict(input_name="images:0", input_shape=SHAPE, dtype=np.dtype(np.float32), batch_size=4,
                    num_samples=None, shuffle=False, seed=0, preprocess="inception")
    settings.update(options)
    return list(open_calibration_data(data, **settings))


@pytest.fixture()
def array() -> np.ndarray:
    return np.arange(10 * 6 * 5 * 3, dtype=np.float32).reshape(10, 6, 5, 3)


def test_npy_file_in_order_without_shuffle(tmp_path, array):
    np.save(tmp_path / "x.npy", array)
    got = batches(tmp_path / "x.npy")
    assert [len(b) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), array)


def test_folder_of_npy_files_is_one_dataset(tmp_path, array):
    np.save(tmp_path / "a.npy", array[:3])
    np.save(tmp_path / "b.npy", array[3:])
    np.testing.assert_array_equal(np.concatenate(batches(tmp_path)), array)


def test_shuffle_is_a_seeded_permutation_and_num_samples_stops_early(array):
    first = np.concatenate(batches(array, shuffle=True, seed=3, num_samples=7))
    again = np.concatenate(batches(array, shuffle=True, seed=3, num_samples=7))
    other = np.concatenate(batches(array, shuffle=True, seed=4, num_samples=7))
    assert len(first) == 7
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    rows = {row.tobytes() for row in array}
    assert all(row.tobytes() in rows for row in first)


def test_npz_picks_the_array_named_after_the_input(tmp_path, array):
    np.savez(tmp_path / "x.npz", images=array, labels=np.zeros(10))
    np.testing.assert_array_equal(np.concatenate(batches(tmp_path / "x.npz")), array)


def test_images_are_decoded_resized_and_scaled(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        (tmp_path / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    (tmp_path / "labels.txt").write_text("ignored")
    got = np.concatenate(batches(tmp_path))
    np.testing.assert_allclose(got, pixels / 127.5 - 1, atol=1e-6)
    grey = np.concatenate(batches(tmp_path, preprocess="unit", input_shape=(None, 3, 3, 1)))
    assert grey.shape == (2, 3, 3, 1) and 0 <= grey.min() and grey.max() <= 1


def test_iterable_of_pairs_and_dicts(array):
    pairs = [(array[:4], np.zeros(4)), (array[4:], np.zeros(6))]
    np.testing.assert_array_equal(np.concatenate(batches(pairs)), array)
    dicts = [{"images": array[:5]}, {"images": array[5:]}]
    np.testing.assert_array_equal(np.concatenate(batches(dicts, num_samples=6)), array[:6])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "no calibration samples"),
        (lambda p: (p / "notes.txt").write_text("x") and p, "found: .txt"),
    ],
)
def test_missing_or_empty_data(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        batches(make(tmp_path))


def test_mixed_folder_is_refused(tmp_path, array):
    np.save(tmp_path / "x.npy", array)
    (tmp_path / "y.png").write_bytes(tf.io.encode_png(np.zeros((6, 5, 3), np.uint8)).numpy())
    with pytest.raises(DataError, match="mixes images and arrays"):
        batches(tmp_path)


def test_wrong_sample_shape(array):
    with pytest.raises(DataError, match=r"shape \(5, 6, 3\) but the model input takes \(6, 5, 3\)"):
        batches(array.reshape(10, 5, 6, 3))


def test_nan_is_named(array):
    array[6, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="sample 6 .* NaN"):
        batches(array)


def test_undecodable_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode"):
        batches(tmp_path)
