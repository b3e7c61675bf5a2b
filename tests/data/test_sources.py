"""Every source kind against numpy references: .npy/.npz files and folders, image folders, TFRecords, Python objects."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import SHAPE, batches, example, open_batches, pixels, write_images, write_records

from ckptfix.data import InputSpec, open_calibration_data
from ckptfix.errors import DataError


@pytest.fixture()
def array() -> np.ndarray:
    return np.arange(10 * 6 * 5 * 3, dtype=np.float32).reshape(10, 6, 5, 3)


# numpy ---------------------------------------------------------------------------------------------------

def test_npy_file_in_order_without_shuffle(tmp_path, array):
    np.save(tmp_path / "x.npy", array)
    got = batches(tmp_path / "x.npy")
    assert [len(b) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), array)


def test_folder_of_npy_files_is_one_dataset_and_one_sample_per_file_works(tmp_path, array):
    np.save(tmp_path / "a.npy", array[:3])
    np.save(tmp_path / "b.npy", array[3:])
    np.testing.assert_array_equal(np.concatenate(batches(tmp_path)), array)
    single = tmp_path / "single"
    single.mkdir()
    for i, sample in enumerate(array):
        np.save(single / f"{i:02d}.npy", sample)
    opened = open_batches(single)
    np.testing.assert_array_equal(np.concatenate(list(opened)), array)
    assert opened.last.names[-1].endswith("09.npy")


def test_npy_is_memory_mapped_not_loaded(tmp_path, array):
    """Fortran order and float64 storage too; the cast to the input dtype happens per batch."""
    np.save(tmp_path / "x.npy", np.asfortranarray(array.astype(np.float64)))
    np.testing.assert_array_equal(np.concatenate(batches(tmp_path / "x.npy")), array)


def test_shuffled_rows_are_read_from_the_file_exactly(tmp_path, array):
    """Rows come from positioned reads (runs of consecutive rows in one read), any order, any stored dtype."""
    np.save(tmp_path / "x.npy", array.astype(">f8"))  # big-endian float64: cast per batch
    np.savez(tmp_path / "y.npz", images=array)
    for path in (tmp_path / "x.npy", tmp_path / "y.npz"):
        opened = open_batches(path, shuffle=True, seed=2)
        got = np.concatenate(list(opened))
        order = [int(name.rsplit("[", 1)[1].rstrip("]")) for name in opened.last.names]
        np.testing.assert_array_equal(got[-len(order):], array[order])
        assert sorted(row.tobytes() for row in got) == sorted(row.tobytes() for row in array)


def test_truncated_npy_is_an_error_naming_the_file(tmp_path, array):
    np.save(tmp_path / "x.npy", array)
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[: len(data) - array[0].nbytes // 2])
    with pytest.raises(DataError, match=r"x\.npy ends before its array does"):
        batches(tmp_path / "x.npy")


def test_npz_picks_the_array_named_after_the_input(tmp_path, array):
    np.savez(tmp_path / "x.npz", images=array, labels=np.zeros(10))
    np.testing.assert_array_equal(np.concatenate(batches(tmp_path / "x.npz")), array)


def test_npz_multi_input_gives_dicts_keyed_by_input(tmp_path, array):
    other = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
    np.savez(tmp_path / "x.npz", images=array, meta=other, labels=np.zeros(10))
    inputs = [InputSpec("images:0", SHAPE, np.dtype(np.float32)), InputSpec("tower/meta:0", (None, 4), np.dtype(np.float32))]
    got = list(open_calibration_data(tmp_path / "x.npz", inputs=inputs, batch_size=4, shuffle=False))
    assert [sorted(b) for b in got] == [["images:0", "tower/meta:0"]] * 3
    np.testing.assert_array_equal(np.concatenate([b["tower/meta:0"] for b in got]), other)
    np.testing.assert_array_equal(np.concatenate([b["images:0"] for b in got]), array)


def test_compressed_npz_is_refused_with_the_fix(tmp_path, array):
    np.savez_compressed(tmp_path / "x.npz", images=array)
    with pytest.raises(DataError, match="np.savez"):
        batches(tmp_path / "x.npz")


def test_shuffle_is_a_seeded_permutation_and_num_samples_stops_early(array):
    first = np.concatenate(batches(array, shuffle=True, seed=3, num_samples=7))
    again = np.concatenate(batches(array, shuffle=True, seed=3, num_samples=7))
    other = np.concatenate(batches(array, shuffle=True, seed=4, num_samples=7))
    assert len(first) == 7
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    rows = {row.tobytes() for row in array}
    assert all(row.tobytes() in rows for row in first)


# images --------------------------------------------------------------------------------------------------

def test_images_are_decoded_and_scaled_in_sorted_order(tmp_path):
    images = pixels(6)
    write_images(tmp_path, images)
    (tmp_path / "labels.txt").write_text("ignored")
    np.testing.assert_allclose(np.concatenate(batches(tmp_path)), images / 127.5 - 1, atol=1e-6)


def test_image_folder_searched_recursively_grey_rgba_bmp_gif(tmp_path):
    rgb = pixels(1)[0]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1_rgb.png").write_bytes(tf.io.encode_png(rgb).numpy())
    grey = rgb[..., :1]
    (tmp_path / "a" / "2_grey.png").write_bytes(tf.io.encode_png(grey).numpy())
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 7, np.uint8)], -1)
    (tmp_path / "b_rgba.png").write_bytes(tf.io.encode_png(rgba).numpy())
    (tmp_path / "c.bmp").write_bytes(_bmp(rgb))
    got = np.concatenate(batches(tmp_path, preprocess="raw"))
    # sorted paths: a/1_rgb, a/2_grey, b_rgba, c.bmp
    np.testing.assert_array_equal(got[0], rgb)
    np.testing.assert_array_equal(got[1], np.repeat(grey, 3, -1))
    np.testing.assert_array_equal(got[2], rgb)
    np.testing.assert_array_equal(got[3], rgb)
    grey_input = np.concatenate(batches(tmp_path, preprocess="raw", input_shape=(None, 6, 5, 1)))
    np.testing.assert_array_equal(grey_input[1], grey)
    expected = np.round(rgb.astype(np.float32) @ np.array([0.2989, 0.587, 0.114], np.float32))[..., None]
    np.testing.assert_allclose(grey_input[0], expected, atol=1)


def _bmp(rgb: np.ndarray) -> bytes:
    """A 24-bit BMP written by hand (rows bottom-up, BGR, padded to 4 bytes)."""
    import struct

    height, width, _ = rgb.shape
    row = width * 3 + (-width * 3) % 4
    body = b"".join(rgb[y, :, ::-1].tobytes() + b"\0" * (row - width * 3) for y in range(height - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(body), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return header + info + body


def test_gif_first_frame(tmp_path):
    # a 2x2 two-frame GIF with a global palette (black, white); frame 1 white, frame 2 black
    gif = bytes.fromhex(
        "47494638396102000200800000000000ffffff21f90400000000002c00000000020002000002028451002c0000000002"
        "0002000002028451003b"
    )
    (tmp_path / "x.gif").write_bytes(gif)
    decoded = tf.io.decode_image(gif, expand_animations=False).numpy()
    got = batches(tmp_path, preprocess="raw", input_shape=(None, 2, 2, 3))
    np.testing.assert_array_equal(got[0][0], decoded)


def test_image_size_for_inputs_without_static_size(tmp_path):
    write_images(tmp_path, pixels(2, (8, 8, 3)))
    with pytest.raises(DataError, match="--image-size"):
        batches(tmp_path, input_shape=(None, None, None, 3))
    got = batches(tmp_path, input_shape=(None, None, None, 3), image_size="4x6")
    assert got[0].shape == (2, 4, 6, 3)
    with pytest.raises(DataError, match="does not match the input's size 6x5"):
        batches(tmp_path, image_size="4x4")


# TFRecords -----------------------------------------------------------------------------------------------

def test_tfrecord_encoded_images_plain_and_gzip(tmp_path):
    images = pixels(7)
    records = [example(**{"image/encoded": tf.io.encode_png(i).numpy(), "label": [1]}) for i in images]
    write_records(tmp_path / "a.tfrecord", records[:4])
    write_records(tmp_path / "b.tfrecords", records[4:], gzip=True)
    got = np.concatenate(batches(tmp_path, preprocess="unit"))
    np.testing.assert_allclose(got, images / 255.0, atol=1e-6)


def test_tfrecord_raw_float_feature_reshaped(tmp_path, array):
    write_records(tmp_path / "x.tfrecord", [example(x=row) for row in array])
    np.testing.assert_array_equal(np.concatenate(batches(tmp_path, feature="x")), array)
    with pytest.raises(DataError, match="no feature 'image/encoded' .*features: x.*--feature"):
        batches(tmp_path)


def test_tfrecord_shuffle_is_deterministic_per_seed(tmp_path, array):
    for k in range(3):
        write_records(tmp_path / f"{k}.tfrecord", [example(x=row + 1000 * k) for row in array])
    first = np.concatenate(batches(tmp_path, feature="x", shuffle=True, seed=1))
    again = np.concatenate(batches(tmp_path, feature="x", shuffle=True, seed=1))
    other = np.concatenate(batches(tmp_path, feature="x", shuffle=True, seed=2))
    ordered = np.concatenate(batches(tmp_path, feature="x"))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and not np.array_equal(first, ordered)
    assert sorted(map(bytes, first)) == sorted(map(bytes, ordered))


# folders and formats -------------------------------------------------------------------------------------

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


def test_mixed_folder_is_refused_unless_format_picks_one(tmp_path, array):
    np.save(tmp_path / "x.npy", array)
    write_images(tmp_path, pixels(1))
    with pytest.raises(DataError, match=r"mixes kinds of data \(1 images, 1 numpy\).*--format"):
        batches(tmp_path)
    np.testing.assert_array_equal(np.concatenate(batches(tmp_path, data_format="numpy")), array)
    assert len(np.concatenate(batches(tmp_path, data_format="images"))) == 1


# Python objects ------------------------------------------------------------------------------------------

def test_iterable_of_pairs_and_dicts(array):
    pairs = [(array[:4], np.zeros(4)), (array[4:], np.zeros(6))]
    np.testing.assert_array_equal(np.concatenate(batches(pairs)), array)
    dicts = [{"images": array[:5]}, {"images": array[5:]}]
    np.testing.assert_array_equal(np.concatenate(batches(dicts, num_samples=6)), array[:6])


def test_tf_data_datasets_of_samples_batches_and_pairs(array):
    samples = tf.data.Dataset.from_tensor_slices(array)
    got = batches(samples)
    assert [len(b) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), array)
    user_batches = tf.data.Dataset.from_tensor_slices((array, np.arange(10))).batch(5)
    got = batches(user_batches)
    assert [len(b) for b in got] == [5, 5]
    as_dicts = tf.data.Dataset.from_tensor_slices({"images": array, "label": np.arange(10)}).batch(3)
    np.testing.assert_array_equal(np.concatenate(batches(as_dicts, num_samples=8)), array[:8])
