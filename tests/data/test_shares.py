"""Issue 26: a worker's share of the batches, assigned before reading. For image folders, TFRecords and numpy
files, the shares of two workers together are exactly the whole data's batches (same numbers, samples, values),
each worker decodes only the files of its own batches, and a file that cannot be decoded is skipped by the
worker that owns it."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import example, open_batches, pixels, write_images, write_records

# 21 samples in batches of 4: four full batches, then 5 (a last batch of 1 merged into the one before)
SAMPLES, BATCH_SIZE = 21, 4


def _data(tmp_path, kind: str):
    images = pixels(SAMPLES, seed=4)
    if kind == "images":
        write_images(tmp_path / "images", images, "png")
        return tmp_path / "images"
    if kind == "tfrecord":
        records = [example(**{"image/encoded": tf.io.encode_png(image).numpy()}) for image in images]
        write_records(tmp_path / "a.tfrecord", records[:9])
        write_records(tmp_path / "b.tfrecord", records[9:], gzip=True)
        return tmp_path
    np.save(tmp_path / "x.npy", images.astype(np.float32) / 255)
    return tmp_path / "x.npy"


def _batches(data, **options):
    opened = open_batches(data, batch_size=BATCH_SIZE, shuffle=True, seed=1, **options)
    return opened, list(opened.batches())


@pytest.mark.parametrize("kind", ["images", "tfrecord", "numpy"])
def test_two_shares_are_the_whole_datas_batches(tmp_path, kind):
    data = _data(tmp_path, kind)
    whole, expected = _batches(data)
    shares = [_batches(data, share=(rank, 2)) for rank in range(2)]

    assert [len(b) for b in expected] == [4, 4, 4, 4, 5]
    for rank, (opened, got) in enumerate(shares):
        assert [b.index for b in got] == [i for i in range(5) if i % 2 == rank]
        assert opened.merged_last == whole.merged_last == (1, 5)
        assert opened.num_samples == sum(len(b) for b in got)
        for batch in got:
            assert batch.names == expected[batch.index].names
            np.testing.assert_array_equal(batch.values["images:0"], expected[batch.index].values["images:0"])


def test_each_share_decodes_only_its_own_files(tmp_path):
    folder = _data(tmp_path, "images")
    decoded = {0: [], 1: []}

    def counting(rank):
        def preprocess(image):  # runs once per decoded file, inside the tf.data pipeline
            def record(pixels):
                decoded[rank].append(pixels.numpy().tobytes())
                return pixels
            seen = tf.py_function(record, [image], tf.uint8)
            return tf.cast(tf.reshape(seen, tf.shape(image)), tf.float32)
        return preprocess

    names = {}
    for rank in range(2):
        _, got = _batches(folder, share=(rank, 2), preprocess=counting(rank))
        names[rank] = [name for batch in got for name in batch.names]

    assert len(decoded[0]) == len(names[0]) == 13 and len(decoded[1]) == len(names[1]) == 8  # 0, 2, 4 / 1, 3
    assert not set(decoded[0]) & set(decoded[1])
    assert len(set(decoded[0]) | set(decoded[1])) == SAMPLES


@pytest.mark.parametrize("kind", ["images", "tfrecord"])
def test_a_bad_file_or_record_is_skipped_by_its_share_only(tmp_path, kind):
    data = _data(tmp_path, kind)
    if kind == "images":
        (data / "000.png").write_bytes(b"\x89PNG not really")
        bad = str(data / "000.png")
    else:
        records = [example(**{"image/encoded": tf.io.encode_png(image).numpy()}) for image in pixels(9, seed=4)]
        write_records(tmp_path / "a.tfrecord", records[:3] + [example(**{"image/encoded": b"not an image"})] + records[4:])
        bad = f"{tmp_path / 'a.tfrecord'} record(s) 3"
    shares = [_batches(data, share=(rank, 2)) for rank in range(2)]
    skipped = [opened.skipped_files for opened, _ in shares]

    assert sorted(len(names) for names in skipped) == [0, 1] and skipped[0] + skipped[1] == [bad]
    opened, got = shares[0] if skipped[0] else shares[1]
    assert sum(len(b) for b in got) == opened.num_samples - 1  # its batch is one sample short, the others whole


def test_batches_given_from_python_are_read_whole_and_the_others_dropped():
    given = [np.full((3, 6, 5, 3), k, np.float32) for k in range(5)]  # the caller's batches: nothing to assign
    opened, got = _batches(iter(given), share=(1, 2))
    assert [b.index for b in got] == [1, 3]
    assert [float(b.values["images:0"][0, 0, 0, 0]) for b in got] == [1.0, 3.0]
