"""Calibration data given from Python: numpy arrays, a ``tf.data.Dataset``, or any iterable of batches.

* a numpy array ``(N, ...)`` (or, for several inputs, a dict of them keyed by input name): preprocessed
  samples, batched with ``batch_size``, shuffled with ``seed`` unless ``shuffle=False``.
* a ``tf.data.Dataset``: of samples (rank of the input minus one: batched here with ``batch_size``) or of
  batches (used as they come); elements may be arrays, dicts keyed by input name, or ``(inputs, labels)`` /
  ``(inputs, labels, sample_weights)`` tuples, as ``Model.fit`` takes them.
* any other iterable of batches: arrays, dicts keyed by input name, or ``(inputs, labels)`` pairs (or
  ``(inputs, labels, sample_weights)`` tuples); each item is one forward pass, as the caller batched it.

The caller's pipeline order is kept (``shuffle`` does not apply to datasets and iterables); labels are ignored.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ckptfix.data.arrays import InMemory
from ckptfix.data.batching import Chunk
from ckptfix.data.spec import InputSpec, check_sample_shape, key_for_input, keys_for_inputs
from ckptfix.errors import DataError


def features(item):
    """The inputs part of an element: ``x`` of ``(x, y)`` (a tuple or a list) or of a ``(x, y, sample_weight)``
    tuple, as ``Model.fit`` reads them; anything else is the inputs itself. Works on element specs too."""
    if isinstance(item, (tuple, list)) and len(item) == 2 or isinstance(item, tuple) and len(item) == 3:
        return item[0]
    return item


def inputs_of(item, inputs: Sequence[InputSpec], where: str) -> dict:
    """The part of one element that feeds each input (labels dropped)."""
    if isinstance(item, dict) and len(inputs) > 1:
        return {name: item[key] for name, key in keys_for_inputs(item.keys(), inputs, where).items()}
    if isinstance(item, dict):
        picked = {}
        for spec in inputs:
            key = key_for_input(item.keys(), spec.name, spec.aliases)
            if key is None and len(item) == 1 and len(inputs) == 1:
                key = next(iter(item))
            if key is None:
                raise DataError(
                    f"{where} is a dict with keys {', '.join(map(str, item))}: key the input by its name {spec.name}."
                )
            picked[spec.name] = item[key]
        return picked
    if features(item) is not item:  # (inputs, labels[, sample_weights])
        return inputs_of(features(item), inputs, where)
    if len(inputs) > 1:
        raise DataError(f"{where}: a model with several inputs needs dicts keyed by input name.")
    return {inputs[0].name: item}


def in_memory(data, inputs: Sequence[InputSpec]) -> InMemory:
    """A numpy array (or dict of arrays, one per input), checked against the inputs."""
    values = inputs_of(data, inputs, "the given arrays")
    arrays = {name: np.asarray(v) for name, v in values.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        raise DataError(f"the given arrays have different lengths ({sorted(lengths)}), one per input expected.")
    for spec in inputs:
        check_sample_shape(arrays[spec.name].shape[1:], spec, "the given array")
    if not lengths or lengths == {0}:
        raise DataError("the given array holds no samples (length 0).")
    return InMemory(arrays, "array")


def _to_chunk(item, inputs: Sequence[InputSpec], k: int, label: str) -> Chunk:
    where = f"{label} {k}"
    values = {}
    for name, value in inputs_of(item, inputs, where).items():
        spec = next(s for s in inputs if s.name == name)
        array = np.asarray(value)
        if array.ndim == 0:
            raise DataError(f"{where} is a scalar, not a batch of samples.")
        check_sample_shape(array.shape[1:], spec, where)
        if np.issubdtype(spec.dtype, np.integer) and np.issubdtype(array.dtype, np.floating) and \
                not np.array_equal(array, np.trunc(array)):
            raise DataError(f"{where} holds fractional values for {spec.name}, which is read as integers "
                            "(an integer input, or 0..255 images as batch 0 was): give every batch one integer dtype.")
        values[name] = array.astype(spec.dtype, copy=False)
    lengths = {len(v) for v in values.values()}
    if len(lengths) > 1:
        raise DataError(f"{where}: the inputs' arrays have different lengths ({sorted(lengths)}).")
    n = lengths.pop()
    return Chunk(values, [f"{where}[{j}]" for j in range(n)])


def dataset_chunks(dataset, inputs: Sequence[InputSpec], batch_size: int) -> tuple[Callable[[], Iterator[Chunk]], bool]:
    """Chunks of a ``tf.data.Dataset`` and whether they are samples batched here (True) or the caller's batches."""
    import tensorflow as tf

    spec = dataset.element_spec
    part = features(spec)
    first = next(iter(part.values())) if isinstance(part, dict) else part
    rank = getattr(first.shape, "rank", None) if isinstance(first, tf.TensorSpec) else None
    input_rank = None if inputs[0].shape is None else len(inputs[0].shape)
    samples = rank is not None and input_rank is not None and rank == input_rank - 1
    source = dataset.batch(batch_size) if samples else dataset

    def chunks() -> Iterator[Chunk]:
        for k, item in enumerate(source.as_numpy_iterator()):
            yield _to_chunk(item, inputs, k, "dataset element" if not samples else "dataset batch")

    return chunks, samples


def check_bounded(data, num_samples: int | None, stops_early: bool) -> None:
    """Refuse a ``tf.data.Dataset`` that never ends (``.repeat()``: cardinality ``INFINITE``) unless
    ``num_samples`` bounds the read or the caller stops by itself (``stops_early``: ``until_stable``); it would run
    for ever. A dataset whose cardinality TensorFlow cannot tell (``UNKNOWN``: a generator, a ``filter``) is read
    until it ends."""
    import sys

    tf = sys.modules.get("tensorflow")  # only a caller holding a Dataset has imported it
    if tf is None or not isinstance(data, tf.data.Dataset) or num_samples is not None or stops_early:
        return
    if int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise DataError("the tf.data.Dataset never ends (.repeat() without a count): pass num_samples=N or "
                        "until_stable=TOL, or give a finite dataset (.take(N)).")


def iterable_chunks(data: Iterable, inputs: Sequence[InputSpec]) -> Callable[[], Iterator[Chunk]]:
    def chunks() -> Iterator[Chunk]:
        for k, item in enumerate(data):
            yield _to_chunk(item, inputs, k, "given batch")

    return chunks
