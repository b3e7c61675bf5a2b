"""TFRecord files of ``tf.train.Example``: an encoded image feature, or a raw float feature.

``--feature`` (default ``image/encoded``) names the feature. Its kind is read from the first record: a
``bytes_list`` holds an encoded image (decoded and preprocessed like an image file); a ``float_list`` (or
``int64_list``) holds a sample reshaped to the input's sample shape (its size must match), used as is (int64
pixels for a float image input are preprocessed afterwards, see :func:`ckptfix.data.sources._integer_images`). GZIP-compressed files are recognised by their magic bytes.

Before streaming, each file's record framing is walked (8-byte lengths, seeking over the payloads, or
reading through the gzip stream): this counts the records, for the progress bar and to find what was lost,
and finds a truncated file, whose complete records are used and whose tail is reported as skipped.
Streaming interleaves the (shuffled) files, shuffles serialized records in a buffer that holds all of them
when they fit :data:`SHUFFLE_BUFFER_BYTES` (a file sorted by class is then read in a random order; larger data
is mixed only within the buffer, and is not taken as randomly ordered), decodes with a
parallel map and drops records that fail (``ignore_errors``); every element carries its file and record
number, so the records that never arrive are named at the end. For a share of the batches
(:class:`~ckptfix.data.batching.Share`), the records are numbered in that stream and assigned to batches
before they are parsed and decoded; only the share's are decoded (the others' serialized bytes are read and
dropped), and only they are checked for loss.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ckptfix.data.batching import Chunk, Share, SkipLog, batch_count
from ckptfix.data.images import _parallel_calls, decode_and_preprocess, pipeline_options, wrong_shape
from ckptfix.data.preprocessing import ImagePreprocessing
from ckptfix.data.spec import InputSpec, show_shape
from ckptfix.errors import DataError

#: the shuffle buffer holds every record of the data when their serialized bytes fit this budget (then the
#: order is uniformly random); else as many records as fit, at least MIN_SHUFFLE_BUFFER
SHUFFLE_BUFFER_BYTES = 256 * 2**20
MIN_SHUFFLE_BUFFER = 1024
_INTERLEAVE = 4  # files read at a time when shuffling (one after the other otherwise)


@dataclass(frozen=True)
class RecordFile:
    """A TFRecord file: its complete records and whether it is GZIP-compressed."""

    path: Path
    records: int
    gzip: bool
    truncated: bool


def shuffle_buffer(files: Sequence[RecordFile]) -> int:
    """Records the shuffle buffer holds: all of them when their bytes fit :data:`SHUFFLE_BUFFER_BYTES` (a
    compressed file counts at its size on disk times 4), else as many as fit, at least
    :data:`MIN_SHUFFLE_BUFFER`."""
    records = sum(f.records for f in files)
    size = sum(f.path.stat().st_size * (4 if f.gzip else 1) for f in files)
    per_record = size / max(records, 1)
    return max(MIN_SHUFFLE_BUFFER, min(records, int(SHUFFLE_BUFFER_BYTES / max(per_record, 1.0))))


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def scan(path: Path) -> RecordFile:
    """Count the complete records of ``path`` by walking the framing (payloads skipped, CRCs not checked)."""
    compressed = _is_gzip(path)
    records, truncated = 0, False
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            size = None if compressed else path.stat().st_size
            position = 0
            while True:
                header = handle.read(12)
                if not header:
                    break
                if len(header) < 12:
                    truncated = True
                    break
                (length,) = struct.unpack("<Q", header[:8])
                end = position + 12 + length + 4
                if size is not None:
                    if end > size:
                        truncated = True
                        break
                    handle.seek(end)
                else:
                    skipped = handle.read(length + 4)
                    if len(skipped) < length + 4:
                        truncated = True
                        break
                position = end
                records += 1
    except (OSError, EOFError, zlib.error) as error:
        if records == 0 and not isinstance(error, (EOFError, zlib.error)) and not compressed:
            raise DataError(f"cannot read {path}: {error}.") from None
        truncated = True
    return RecordFile(path, records, compressed, truncated)


def _first_example(files: Sequence[RecordFile]):
    import tensorflow as tf

    for record_file in files:
        if record_file.records:
            dataset = tf.data.TFRecordDataset(str(record_file.path), "GZIP" if record_file.gzip else "")
            try:
                serialized = next(iter(dataset.take(1))).numpy()
                return record_file.path, tf.train.Example.FromString(serialized)
            except Exception:  # a damaged first record: try the next file
                continue
    return None, None


def feature_kind(files: Sequence[RecordFile], feature: str) -> str:
    """``"image"``, ``"float"`` or ``"int64"`` (the last two: raw samples), from the first readable record."""
    path, example = _first_example(files)
    if example is None:
        raise DataError(f"no readable record in {len(files)} TFRecord file(s) ({files[0].path} ...).")
    features = example.features.feature
    if feature not in features:
        listed = ", ".join(sorted(features)) or "none"
        raise DataError(f"records in {path} have no feature {feature!r} (features: {listed}): pass --feature NAME.")
    kind = features[feature].WhichOneof("kind")
    if kind == "bytes_list":
        return "image"
    if kind in ("float_list", "int64_list"):
        return kind[: -len("_list")]
    raise DataError(f"feature {feature!r} in {path} is empty: pass --feature with an image or float feature.")


def record_chunks(
    files: Sequence[RecordFile],
    feature: str,
    kind: str,
    prep: ImagePreprocessing | None,
    spec: InputSpec,
    skips: SkipLog,
    read_batch: int,
    shuffle: bool,
    seed: int,
    share: Share = Share(),
    layout: tuple[int, int] | None = None,
) -> Iterator[Chunk]:
    """Samples from the records of ``files`` (in that order, interleaved), in chunks of up to ``read_batch``. With
    ``layout`` ``(records laid out, batch size)``, only the records of ``share``'s batches, carrying their batch."""
    import tensorflow as tf

    names = [str(f.path) for f in files]
    for record_file in files:
        if record_file.truncated:
            skips.skip(str(record_file.path), f"truncated or damaged after record {record_file.records}: the rest of the file")
    dtype = tf.as_dtype(spec.dtype)
    if kind != "image":
        sample_shape = spec.sample_shape
        if sample_shape is None or None in sample_shape:
            raise DataError(
                f"a raw feature is reshaped to the input's sample shape, but {spec.name} has shape "
                f"{show_shape(spec.shape or ())}: pass images or .npy arrays instead."
            )
        size = int(np.prod(sample_shape))
        parse_spec = {feature: tf.io.VarLenFeature(tf.float32 if kind == "float" else tf.int64)}
    else:
        parse_spec = {feature: tf.io.FixedLenFeature([], tf.string)}

    def parse(file_index, record_index, serialized, batch=None):
        if kind == "image":
            encoded = tf.io.parse_single_example(serialized, parse_spec)[feature]
            sample, ok, padded = decode_and_preprocess(encoded, prep, spec)
        else:
            values = tf.io.parse_single_example(serialized, parse_spec)[feature].values
            ok = tf.equal(tf.size(values), size)
            padded = tf.concat([tf.reshape(tf.size(values, out_type=tf.int64), [1]), tf.fill([7], tf.constant(-1, tf.int64))], 0)
            sample = tf.cond(
                ok, lambda: tf.reshape(tf.cast(values, dtype), sample_shape), lambda: tf.zeros(sample_shape, dtype)
            )
        return sample, ok, padded, file_index, record_index, tf.constant(-1, tf.int64) if batch is None else batch

    def records_of(file_index, path, compression, count):
        return (
            tf.data.TFRecordDataset(path, compression)
            .take(count)
            .enumerate()
            .map(lambda k, serialized: (file_index, k, serialized))
        )

    files_dataset = tf.data.Dataset.from_tensor_slices(
        (
            tf.range(len(files), dtype=tf.int64),
            names,
            ["GZIP" if f.gzip else "" for f in files],
            tf.constant([f.records for f in files], tf.int64),
        )
    )
    cycle = min(_INTERLEAVE, len(files)) if shuffle else 1

    def stream():
        """(file, record, serialized[, batch]) in reading order; with ``layout``, the share's records only."""
        dataset = files_dataset.interleave(
            records_of, cycle_length=cycle, num_parallel_calls=min(cycle, _parallel_calls()), deterministic=True
        )
        if shuffle:
            dataset = dataset.shuffle(shuffle_buffer(files), seed=seed, reshuffle_each_iteration=False)
        if layout is None:
            return dataset
        total, batch_size = layout  # numbered in the stream, assigned to batches, the others' dropped undecoded
        last = batch_count(total, batch_size) - 1
        return (dataset.take(total).enumerate()
                .map(lambda k, element: (*element, tf.minimum(k // batch_size, last)))
                .filter(lambda f, r, serialized, batch: tf.equal(batch % share.count, share.index)))

    dataset = (
        stream().map(parse, num_parallel_calls=_parallel_calls(), deterministic=True)
        .ignore_errors()
        .batch(read_batch)
        .prefetch(2)
        .with_options(pipeline_options())
    )
    seen = [np.zeros(f.records, bool) for f in files]
    for samples, ok, padded, file_indices, record_indices, batches in dataset.as_numpy_iterator():
        labels = [f"{names[f]}#{r}" for f, r in zip(file_indices, record_indices)]
        if not ok.all():
            bad = int(np.argmin(ok))
            if kind == "image":
                raise wrong_shape(padded[bad], labels[bad], prep, spec)
            raise DataError(
                f"feature {feature!r} of record {labels[bad]} has {int(padded[bad][0])} values but the model input "
                f"{spec.name} takes {show_shape(spec.sample_shape)} = {size}: re-export the records."
            )
        for f, r in zip(file_indices, record_indices):
            seen[f][r] = True
        yield Chunk({spec.name: samples}, labels, None if layout is None else batches)
    wanted = None if layout is None else _share_records(stream(), files, seen, share.positions(*layout)[0].size)
    for k, (record_file, flags) in enumerate(zip(files, seen)):
        missing = np.flatnonzero(~flags if wanted is None else wanted[k] & ~flags)
        if len(missing):
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            skips.skip(
                f"{record_file.path} record(s) {shown}",
                f"{len(missing)} record(s) could not be read or decoded ({kind} feature {feature!r})",
                count=len(missing),
            )



def _share_records(stream, files: Sequence[RecordFile], seen: list[np.ndarray], expected: int) -> list[np.ndarray]:
    """Which records a share holds (file -> flags): ``seen`` when all ``expected`` arrived, else read from the share's
    ``stream`` again (serialized records only, nothing decoded) to name the lost ones."""
    if sum(int(flags.sum()) for flags in seen) >= expected:
        return seen
    wanted = [np.zeros(f.records, bool) for f in files]
    for f, r, *_ in stream.as_numpy_iterator():
        wanted[f][r] = True
    return wanted
