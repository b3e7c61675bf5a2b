"""Calibration data: ``.npy`` / ``.npz`` arrays, image files, numpy arrays and iterables of batches.

Arrays shaped ``(N, ...)`` are taken as already preprocessed and read through memory maps, a batch at a time.
Images (jpg, jpeg, png, bmp, gif's first frame) are decoded with ``tf.image`` in a ``tf.data`` pipeline (parallel
decode, prefetch), resized to the input's static height and width (bilinear) and scaled by a preprocessing
preset (:data:`PREPROCESSING`). Shuffling permutes the sample (or file) order with ``numpy``'s generator seeded by
``seed``; without it, files are read in sorted path order and arrays in index order. ``num_samples`` stops
after that many samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ckptfix.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})
ARRAY_SUFFIXES = frozenset({".npy", ".npz"})

#: name -> (description, formula on float32 RGB pixels in 0..255)
PREPROCESSING: dict[str, tuple[str, Callable]] = {
    "inception": ("x / 127.5 - 1, in [-1, 1]", lambda x: x / 127.5 - 1.0),
    "vgg": ("x - (123.68, 116.78, 103.94), RGB mean subtraction", lambda x: x - [123.68, 116.78, 103.94]),
    "unit": ("x / 255, in [0, 1]", lambda x: x / 255.0),
    "raw": ("x, 0..255 floats", lambda x: x),
}


@dataclass
class CalibrationBatches:
    """An iterable of numpy batches fitting the model's input; ``num_samples`` is None when unknown."""

    batches: Callable[[], Iterator[np.ndarray]]
    num_samples: int | None
    description: str
    images: bool = False

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.batches()


class _Arrays:
    """Several ``(N, ...)`` arrays (memory-mapped where possible) seen as one, gathered by sample index."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, indices: np.ndarray) -> np.ndarray:
        order = np.argsort(indices, kind="stable")
        parts = []
        sorted_indices = indices[order]
        which = np.searchsorted(self.starts, sorted_indices, side="right") - 1
        for k in np.unique(which):
            parts.append(np.asarray(self.arrays[k][sorted_indices[which == k] - self.starts[k]]))
        gathered = np.concatenate(parts)
        restored = np.empty_like(gathered)
        restored[order] = gathered
        return restored


def _load_array_file(path: Path, input_name: str) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}; pass a valid .npy/.npz file.") from None
    keys = list(archive.keys())
    wanted = [k for k in keys if k in {input_name, input_name.split(":")[0], input_name.split(":")[0].split("/")[-1]}]
    if len(keys) == 1 or len(wanted) == 1:
        return archive[wanted[0] if wanted else keys[0]]
    raise DataError(f"{path} holds several arrays ({', '.join(keys)}): keep one, or name it after the input.")


def _collect_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"calibration data {path} does not exist: pass a folder or file of calibration samples.")
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    usable = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES]
    if not usable:
        kinds = ", ".join(sorted({p.suffix or p.name for p in files})) or "no files"
        raise DataError(
            f"no calibration samples in {path} (found: {kinds}); use images (.jpg .png .bmp .gif) or arrays (.npy .npz)."
        )
    kinds = {p.suffix.lower() in IMAGE_SUFFIXES for p in usable}
    if len(kinds) > 1:
        raise DataError(f"{path} mixes images and arrays: point DATA at a folder holding one kind.")
    return usable


def _check_samples(sample_shape: tuple, input_shape: tuple | None, source: str) -> None:
    if input_shape is None:
        return
    expected = input_shape[1:]
    fits = len(sample_shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, sample_shape))
    if not fits:
        shown = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise DataError(f"samples in {source} have shape {tuple(sample_shape)} but the model input takes {shown}.")


def _order(count: int, shuffle: bool, seed: int, num_samples: int | None) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
    return order[:num_samples] if num_samples is not None else order


def _array_batches(arrays: _Arrays, order: np.ndarray, batch_size: int, dtype: np.dtype) -> Callable:
    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(order), batch_size):
            yield _finite(arrays.take(order[start : start + batch_size]).astype(dtype, copy=False), start)

    return batches


def _finite(batch: np.ndarray, first_index: int) -> np.ndarray:
    if np.issubdtype(batch.dtype, np.floating) and not np.isfinite(batch).all():
        bad = first_index + int(np.argwhere(~np.isfinite(batch.reshape(len(batch), -1)))[0][0])
        raise DataError(f"calibration sample {bad} (in reading order) contains NaN or Inf: clean the data.")
    return batch


def _image_batches(files: list[Path], input_shape, batch_size: int, dtype, preprocess: str) -> Callable:
    import tensorflow as tf

    if input_shape is None or len(input_shape) != 4 or None in input_shape[1:]:
        raise DataError(
            f"images need a model input of static shape (N, H, W, C), this one is {input_shape}: "
            "pass preprocessed arrays (.npy) instead."
        )
    height, width, channels = input_shape[1:]
    scale = PREPROCESSING[preprocess][1]

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), [height, width])
        return tf.cast(scale(image), dtype)

    def batches() -> Iterator[np.ndarray]:
        dataset = (
            tf.data.Dataset.from_tensor_slices([str(f) for f in files])
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        try:
            for start, batch in enumerate(dataset.as_numpy_iterator()):
                yield _finite(batch, start * batch_size)
        except tf.errors.InvalidArgumentError as error:
            detail = str(error).strip().splitlines()[0]
            raise DataError(f"cannot decode a calibration image ({detail}): remove or convert it.") from None

    return batches


def _iterable_batches(data: Iterable, input_name: str, num_samples: int | None, dtype, input_shape) -> Callable:
    def pick(item):
        if isinstance(item, dict):
            return _load_dict(item, input_name)
        if isinstance(item, (tuple, list)) and len(item) == 2:  # (inputs, labels)
            return pick(item[0])
        return np.asarray(item)

    def batches() -> Iterator[np.ndarray]:
        seen = 0
        for item in data:
            batch = pick(item)
            _check_samples(batch.shape[1:], input_shape, "the given batches")
            if num_samples is not None:
                batch = batch[: num_samples - seen]
            if len(batch):
                yield _finite(batch.astype(dtype, copy=False), seen)
            seen += len(batch)
            if num_samples is not None and seen >= num_samples:
                return

    return batches


def _load_dict(item: dict, input_name: str) -> np.ndarray:
    names = {input_name, input_name.split(":")[0]}
    matches = [k for k in item if k in names]
    if len(item) == 1 or matches:
        return np.asarray(item[matches[0] if matches else next(iter(item))])
    raise DataError(f"a batch dict has keys {', '.join(map(str, item))}; name the input's key {input_name}.")


def open_calibration_data(
    data,
    *,
    input_name: str,
    input_shape: tuple | None,
    dtype: np.dtype,
    batch_size: int,
    num_samples: int | None,
    shuffle: bool,
    seed: int,
    preprocess: str,
) -> CalibrationBatches:
    """Calibration batches for ``data`` (path, array or iterable of batches), shaped for the model input."""
    if isinstance(data, np.ndarray):
        _check_samples(data.shape[1:], input_shape, "the given array")
        order = _order(len(data), shuffle, seed, num_samples)
        return CalibrationBatches(_array_batches(_Arrays([data]), order, batch_size, dtype), len(order), "array")
    if not isinstance(data, (str, Path)):
        return CalibrationBatches(
            _iterable_batches(data, input_name, num_samples, dtype, input_shape), num_samples, "batches"
        )
    path = Path(data).expanduser()
    files = _collect_files(path)
    if files[0].suffix.lower() in ARRAY_SUFFIXES:
        arrays = [_load_array_file(f, input_name) for f in files]
        for f, array in zip(files, arrays):
            _check_samples(array.shape[1:], input_shape, str(f))
        joined = _Arrays(arrays)
        if len(joined) == 0:
            raise DataError(f"{path} holds no samples (arrays of length 0).")
        order = _order(len(joined), shuffle, seed, num_samples)
        return CalibrationBatches(_array_batches(joined, order, batch_size, dtype), len(order), str(path))
    order = _order(len(files), shuffle, seed, num_samples)
    chosen = [files[i] for i in order]
    batches = _image_batches(chosen, input_shape, batch_size, dtype, preprocess)
    return CalibrationBatches(batches, len(chosen), str(path), images=True)
