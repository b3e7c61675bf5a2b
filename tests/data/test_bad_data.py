"""Bad data: skipped by name (or refused with --strict), shapes and NaN named, tiny last batches merged."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import batches, example, open_batches, pixels, write_images, write_records

from ckptfix.pipeline import check_batch_moments
from ckptfix.errors import DataError
from ckptfix.stats import BatchMoments


@pytest.fixture()
def folder_with_bad_files(tmp_path):
    images = pixels(5)
    write_images(tmp_path, images[:3], "jpg")
    jpeg = tf.io.encode_jpeg(images[3]).numpy()
    (tmp_path / "003_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "004_garbage.png").write_bytes(b"this is not a png at all")
    (tmp_path / "005.png").write_bytes(tf.io.encode_png(images[4]).numpy())
    return tmp_path, images


def test_undecodable_files_are_skipped_by_name_and_counted(folder_with_bad_files):
    folder, images = folder_with_bad_files
    warnings = []
    opened = open_batches(folder, preprocess="raw", on_warning=warnings.append)
    got = np.concatenate(list(opened))
    assert len(got) == 4
    np.testing.assert_array_equal(got[3], images[4])  # the PNG, lossless
    assert opened.samples_skipped == 2
    assert [p.split("/")[-1] for p in opened.skipped_files] == ["003_truncated.jpg", "004_garbage.png"]
    assert "003_truncated.jpg" in warnings[0] and "JPEG" in warnings[0]
    assert "004_garbage.png" in warnings[1] and "Unknown image file format" in warnings[1]


def test_strict_makes_a_bad_file_an_error(folder_with_bad_files):
    folder, _ = folder_with_bad_files
    with pytest.raises(DataError, match="003_truncated.jpg.*--strict"):
        batches(folder, strict=True)


def test_only_bad_files_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="no usable sample .* all 2 file\\(s\\) were skipped"):
        batches(tmp_path)


def test_tfrecord_truncated_file_and_bad_record_skipped(tmp_path):
    images = pixels(6)
    records = [example(**{"image/encoded": tf.io.encode_png(i).numpy()}) for i in images]
    records[1] = example(**{"image/encoded": b"not an image"})
    write_records(tmp_path / "a.tfrecord", records[:3])
    data = write_records(tmp_path / "b.tfrecord", records[3:]).read_bytes()
    (tmp_path / "b.tfrecord").write_bytes(data[:-20])  # the last record is cut
    opened = open_batches(tmp_path, preprocess="raw")
    got = np.concatenate(list(opened))
    np.testing.assert_array_equal(got, images[[0, 2, 3, 4]])
    assert opened.samples_skipped == 2
    assert any("b.tfrecord" in s for s in opened.skipped_files)
    assert any("a.tfrecord record(s) 1" in s for s in opened.skipped_files)


def test_sample_shape_mismatch_names_file_and_shapes(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 5, 6, 3), np.float32))
    with pytest.raises(DataError, match=r"x.npy have shape \(5, 6, 3\) but the model input images:0 takes \(6, 5, 3\)"):
        batches(tmp_path)
    write_records(tmp_path / "r.tfrecord", [example(x=np.zeros(7, np.float32))])
    with pytest.raises(DataError, match=r"r.tfrecord#0 has 7 values but the model input images:0 takes \(6, 5, 3\) = 90"):
        batches(tmp_path / "r.tfrecord", feature="x")


def test_nan_or_inf_in_inputs_names_the_sample(tmp_path):
    array = np.zeros((10, 6, 5, 3), np.float32)
    array[6, 0, 0, 0] = np.inf
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match=r"x.npy\[6\] contains NaN or Inf"):
        batches(tmp_path / "x.npy")
    images = tmp_path / "images"
    write_images(images, pixels(3))
    with pytest.raises(DataError, match=r"001.png contains NaN or Inf"):
        batches(images, preprocess=_nan_for_second)


def _nan_for_second(image):
    """NaN everywhere for the image whose first pixel matches pixels(3)[1]."""
    marker = int(pixels(3)[1][0, 0, 0])
    x = tf.cast(image[:6, :5], tf.float32)
    return tf.where(tf.equal(tf.cast(image[0, 0, 0], tf.int32), marker), x * np.nan, x)


@pytest.mark.parametrize(
    "count, batch_size, sizes",
    [(10, 4, [4, 4, 2]), (9, 4, [4, 5]), (3, 4, [3]), (8, 4, [4, 4]), (17, 8, [8, 9])],
)
def test_too_small_last_batch_is_merged(count, batch_size, sizes):
    array = np.arange(count * 90, dtype=np.float32).reshape(count, 6, 5, 3)
    opened = open_batches(array, batch_size=batch_size)
    got = list(opened)
    assert [len(b) for b in got] == sizes
    np.testing.assert_array_equal(np.concatenate(got), array)
    assert (opened.merged_last is not None) == (sizes[-1] > batch_size)


def test_callers_batches_keep_their_size_but_a_tiny_last_one_is_merged():
    array = np.ones((11, 6, 5, 3), np.float32)
    opened = open_batches([array[:5], array[5:10], array[10:]])
    assert [len(b) for b in opened] == [5, 6]
    assert opened.merged_last == (1, 6)


def test_single_value_per_channel_or_non_finite_moments_are_refused():
    describe = lambda: "batch 3 (1 samples: x.npy[9])"  # noqa: E731
    with pytest.raises(DataError, match="dense1/BatchNorm sees a single value per channel in batch 3"):
        check_batch_moments("dense1/BatchNorm", BatchMoments(1, np.zeros(4), np.zeros(4)), describe)
    with pytest.raises(DataError, match="conv1/BatchNorm got NaN or Inf statistics from batch 3"):
        check_batch_moments("conv1/BatchNorm", BatchMoments(8, np.array([1.0, np.inf]), np.zeros(2)), describe)
    check_batch_moments("ok", BatchMoments(2, np.zeros(2), np.zeros(2)), describe)
