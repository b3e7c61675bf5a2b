"""Writing real calibration files for the data tests."""

from pathlib import Path

import numpy as np
import tensorflow as tf

SHAPE = (None, 6, 5, 3)


def open_batches(data, **options):
    from ckptfix.data import open_calibration_data

    settings = dict(input_name="images:0", input_shape=SHAPE, dtype=np.dtype(np.float32), batch_size=4,
                    num_samples=None, shuffle=False, seed=0, preprocess="inception")
    settings.update(options)
    return open_calibration_data(data, **settings)


def batches(data, **options) -> list[np.ndarray]:
    return list(open_batches(data, **options))


def pixels(n: int, shape=(6, 5, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_images(folder: Path, images: np.ndarray, kind: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        encoded = tf.io.encode_png(image) if kind == "png" else tf.io.encode_jpeg(image, quality=95)
        path = folder / f"{i:03d}.{kind}"
        path.write_bytes(encoded.numpy())
        paths.append(path)
    return paths


def example(**features) -> bytes:
    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        value = np.asarray(value).reshape(-1)
        if np.issubdtype(value.dtype, np.integer):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=value))
        return tf.train.Feature(float_list=tf.train.FloatList(value=value))

    return tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def write_records(path: Path, records: list[bytes], gzip: bool = False) -> Path:
    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)
    return path
