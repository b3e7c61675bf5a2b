"""Image files decoded on the fly in a ``tf.data`` pipeline, with bad files skipped by name.

The pipeline maps ``(position, path)`` to a preprocessed sample with a parallel, order-preserving map,
batches and prefetches, so decoding overlaps the forward pass and memory holds a few batches. A file that
cannot be read or decoded (truncated JPEG, not an image at all) makes its map call fail; ``ignore_errors``
drops that element, and since every element carries its position in the (ordered) file list, the gap it
leaves names the file. The reason is then read by decoding that one file again, eagerly.

Every element also carries a flag telling whether the sample has the shape the model takes (only the user's
``--preprocess`` function can get this wrong: presets resize to the input): a wrong shape is an error naming
the file and both shapes, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ckptfix.data.batching import Chunk, SkipLog
from ckptfix.data.preprocessing import ImagePreprocessing, convert_channels
from ckptfix.data.spec import InputSpec, show_shape
from ckptfix.errors import DataError

_MAX_RANK = 8  # the sample's shape travels padded to this length, for the error message


def sample_shape(prep: ImagePreprocessing, spec: InputSpec) -> tuple[int, ...]:
    """The sample shape images are turned into: the input's, with ``--image-size`` for unknown H, W."""
    shape = list(spec.sample_shape)
    shape[0], shape[1] = prep.height, prep.width
    if None in shape:
        raise DataError(f"the model input {spec.name} has unknown dimensions {show_shape(spec.shape)}.")
    return tuple(shape)


def decode_and_preprocess(encoded, prep: ImagePreprocessing, spec: InputSpec):
    """Encoded image bytes -> ``(sample, shape_ok, padded_shape)``; decoding errors are raised by TF."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=0, expand_animations=False)  # gif: first frame
    return preprocess_image(image, prep, spec)


def preprocess_image(image, prep: ImagePreprocessing, spec: InputSpec):
    """A decoded ``uint8 [h, w, c]`` image -> ``(sample, shape_ok, padded_shape)`` (channels converted first)."""
    import tensorflow as tf

    expected = sample_shape(prep, spec)
    image = convert_channels(image, prep.channels)
    sample = tf.convert_to_tensor(prep.build()(image))
    shape = tf.shape(sample, out_type=tf.int64)
    padded = tf.concat([shape, tf.fill([_MAX_RANK], tf.constant(-1, tf.int64))], 0)[:_MAX_RANK]
    ok = tf.logical_and(
        tf.equal(tf.size(shape), len(expected)), tf.reduce_all(tf.equal(padded[: len(expected)], expected))
    )
    dtype = tf.as_dtype(spec.dtype)
    sample = tf.cond(
        ok, lambda: tf.reshape(tf.cast(sample, dtype), expected), lambda: tf.zeros(expected, dtype)
    )
    return sample, ok, padded


def wrong_shape(padded: np.ndarray, name: str, prep: ImagePreprocessing, spec: InputSpec) -> DataError:
    got = tuple(int(d) for d in padded if d >= 0)
    return DataError(
        f"preprocessing {name} with {prep.description} gives shape {got} but the model input {spec.name} "
        f"takes {show_shape(sample_shape(prep, spec))}: fix the --preprocess function."
    )


def decode_error(path: str) -> str:
    """Why ``path`` cannot be used: TensorFlow's own message, decoded again eagerly."""
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(os.fsencode(path)), channels=0, expand_animations=False)
    except (tf.errors.OpError, ValueError) as error:
        text = getattr(error, "message", str(error))
        return text.split("}}")[-1].split("[Op:")[0].strip() or type(error).__name__
    return "it could not be read or decoded"


def _parallel_calls() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def pipeline_options():
    """No autotuning: its background tuning competes for the cores the forward pass runs on (measured on 2 cores)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def image_chunks(
    files: Sequence[Path], prep: ImagePreprocessing, spec: InputSpec, skips: SkipLog, read_batch: int,
    batches: np.ndarray | None = None,
) -> Iterator[Chunk]:
    """Decoded, preprocessed samples of ``files`` in order, in chunks of up to ``read_batch``; with ``batches``
    (each file's batch, assigned before reading), each chunk carries its samples' batch."""
    import tensorflow as tf

    paths = [str(f) for f in files]

    def load(position, path):
        sample, ok, padded = decode_and_preprocess(tf.io.read_file(path), prep, spec)
        return sample, ok, padded, position

    # file names as bytes: a name that is not UTF-8 (undecodable bytes kept by Python as surrogates) is no tf.string
    encoded = [os.fsencode(path) for path in paths]
    with prep.running():
        dataset = (
            tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), tf.constant(encoded, tf.string)))
            .map(load, num_parallel_calls=_parallel_calls(), deterministic=True)
            .ignore_errors()
            .batch(read_batch)
            .prefetch(2)
            .with_options(pipeline_options())
        )
    expected = 0
    for samples, ok, padded, positions in dataset.as_numpy_iterator():
        for position in positions:
            for missing in range(expected, int(position)):
                skips.skip(paths[missing], decode_error(paths[missing]))
            expected = int(position) + 1
        if not ok.all():
            bad = int(np.argmin(ok))
            raise wrong_shape(padded[bad], paths[positions[bad]], prep, spec)
        yield Chunk({spec.name: samples}, [paths[p] for p in positions], None if batches is None else batches[positions])
    for missing in range(expected, len(paths)):
        skips.skip(paths[missing], decode_error(paths[missing]))


def array_image_chunks(
    chunks: Iterator[Chunk], preps: dict[str, ImagePreprocessing], specs: Sequence[InputSpec]
) -> Iterator[Chunk]:
    """``chunks`` whose inputs named in ``preps`` hold integer arrays of 0..255 images, preprocessed exactly as
    decoded image files are; a value outside 0..255 is an error naming the sample."""
    import tensorflow as tf

    def batch_function(prep: ImagePreprocessing, spec: InputSpec):
        signature = (tf.as_dtype(spec.dtype), tf.bool, tf.int64)
        return tf.function(
            lambda images: tf.map_fn(lambda image: preprocess_image(image, prep, spec), images,
                                     fn_output_signature=signature),
            reduce_retracing=True,
        )

    by_name = {spec.name: spec for spec in specs}
    functions = {name: batch_function(prep, by_name[name]) for name, prep in preps.items()}
    for chunk in chunks:
        values = dict(chunk.values)
        for name, run in functions.items():
            pixels = values[name]
            outside = ((pixels < 0) | (pixels > 255)).reshape(len(pixels), -1).any(axis=1)
            if outside.any():
                raise DataError(
                    f"{chunk.names[int(np.argmax(outside))]} holds integers outside 0..255, so it is not an 8-bit "
                    "image: pass floats, already preprocessed, instead."
                )
            with preps[name].running():
                samples, ok, padded = (tensor.numpy() for tensor in run(tf.constant(pixels.astype(np.uint8))))
            if not ok.all():
                bad = int(np.argmin(ok))
                raise wrong_shape(padded[bad], chunk.names[bad], preps[name], by_name[name])
            values[name] = samples
        yield Chunk(values, chunk.names, chunk.batches)
