"""Accurate per-channel batch moments as TensorFlow ops, shared by every measuring session (TF1 graphs, frozen
graphs, SavedModels, Keras models).

For a BN input ``x`` the device computes, per channel, over every axis but the channels, in float32: a *shift*
``s`` near the batch mean, ``s1 = sum(x - s)``, the *center* ``c = s + s1 / n`` (the batch mean to float32
precision) and ``s2 = sum((x - c)**2)``; only these vectors and the shape of ``x`` leave the device. The host
forms, in float64 (:func:`batch_moments`)::

    n = size(x) / channels,   mean = s + s1 / n,   M2 = max(s2 - n * (mean - c)**2, 0)

The sums are matrix products with a vector of ones per sample row (:func:`_row_sums`): a GEMM accumulates in
blocks, so its float32 sum stays ~1e-7 relative, where TensorFlow's CPU ``reduce_sum`` / ``reduce_mean`` over
outer axes and ``FusedBatchNormV3``'s own statistics add the values one after another (issue 14 item 7: 0.12
of sqrt(var + eps) on a published model's 32x187x96 activation; 9 std at 32x299x299 with |mean| = 500 std).
The shift keeps ``s1`` small; the center, formed on the device from ``s1``, keeps ``s2`` free of cancellation
however far the shift was from the mean (docs/performance.md).

A training-mode fused node already computes ``sum((x - m)**2)`` around its own mean ``m``, as float32 values
added one after another: accurate to ~3e-5 relative up to ``FUSED_SQUARES_MAX_COUNT`` values per channel
(measured, benchmarks/moment_accuracy.py). :class:`FusedInputSums` uses it there (``s = c = m``,
``s2 = variance * (n - 1)`` from the node's Bessel-corrected variance, ``s1`` still the accurate product) and
the second product only above, saving one elementwise pass and one product over ``x`` per BN input.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ckptfix.errors import GraphError
from ckptfix.stats import BatchMoments


#: above this many values per channel per batch, the squares are summed by a matrix product, not taken from a fused
#: node's own variance (module docstring): measured <= 3e-5 relative up to here with |mean| up to 500 std
FUSED_SQUARES_MAX_COUNT = 1 << 17


class ShiftedSums(NamedTuple):
    """Graph tensors of one BN input's shifted sums (flat, per channel; module docstring): ``count`` the shape of
    ``x`` (its size over the channels: the values per channel), the ``shift``, ``s1 = sum(x - shift)``, the
    ``center`` and ``s2 = sum((x - center)**2)``."""

    count: object
    shift: object
    s1: object
    center: object
    s2: object


class SharedConstants(dict):
    """Constants shared by the accurate sums of every BN input (one per value: creating ops in a big graph is slow).

    Keyed by the value's shape and bytes: its ``repr`` elides large arrays (``[[1., 1., ..., 1.]]``, and numpy 1
    leaves out the shape too, so every long row of ones would share one constant)."""

    def get_constant(self, value, dtype):
        import tensorflow as tf

        array = np.asarray(value)
        key = (array.dtype.str, array.shape, array.tobytes(), dtype)
        if key not in self:
            self[key] = tf.constant(value, dtype)
        return self[key]


def _row_sums(values, channels: int | None, constants: SharedConstants):
    """Per-channel sums of ``values`` (channels last) over each row: ``ones[1, k] @ values[b, k, channels]`` with
    ``b`` the first axis and ``k`` the product of the axes between (static sizes; else one row of every value).

    Returns the sums ``[b, 1, channels]`` and ``k``. A matrix product accumulates in blocks (CPU GEMM kernels,
    cuBLAS): its float32 sum of ``k`` values is accurate to ~1e-7 relative, where ``tf.reduce_sum`` over outer
    axes on CPU adds the values in a row (error growing with their number, docs/performance.md).
    """
    import tensorflow as tf

    dims = values.shape.as_list()
    if None in dims[1:-1] or channels is None:
        matrix = tf.reshape(values, tf.stack([1, -1, tf.shape(values)[-1]]))
        k = tf.shape(matrix)[1]
        return tf.matmul(tf.ones(tf.stack([1, k]), values.dtype), matrix), tf.cast(k, tf.float32)
    k = int(np.prod(dims[1:-1], dtype=np.int64))
    matrix = tf.reshape(values, constants.get_constant([-1, k, channels], tf.int32))
    return tf.matmul(constants.get_constant(np.ones((1, k), np.float32), tf.float32), matrix), \
        constants.get_constant(float(k), tf.float32)


class _FirstSums(NamedTuple):
    """``x`` as float32 ``values`` with one channel axis, last; its ``channels`` (None when not static), the ``shift``
    and ``s1`` of :func:`_first_sums`; ``count`` the shape of ``x``."""

    values: object
    channels: int | None
    count: object
    shift: object
    s1: object


def _first_sums(x, channel_axes: list[int], constants: SharedConstants, shift=None) -> _FirstSums:
    """``s1`` of ``x`` (float32) per channel; ``shift`` (flat, per channel) defaults to ``reduce_mean(x)`` (float32:
    within a few standard deviations of the mean, which is all a shift needs).

    ``s1`` sums each row unshifted (one pass over ``x``, no ``x - shift`` written) and shifts the row sums:
    ``sum_rows(row - k * shift)``.
    """
    import tensorflow as tf

    values = tf.cast(x, tf.float32)
    rank = values.shape.rank
    axes = [a for a in range(rank) if a not in channel_axes]
    if not axes:
        raise GraphError(f"BN input {x.name} has no axis to reduce over besides its channels.")
    if axes + channel_axes != list(range(rank)):  # channels last
        values = tf.transpose(values, axes + channel_axes)
    if len(channel_axes) != 1:  # several channel axes: one flat channel axis
        values = tf.reshape(values, tf.concat([tf.shape(values)[:len(axes)], [-1]], 0))
    sizes = [x.shape[a] for a in channel_axes]
    channels = int(np.prod(sizes)) if None not in sizes else None
    rows_axes = constants.get_constant([0, 1], tf.int32)
    if shift is None:
        shift = tf.reduce_mean(values, axis=list(range(len(axes))))
    elif shift.shape.rank != 1:
        shift = tf.reshape(shift, [-1])
    with tf.compat.v1.name_scope("accurate_sums"):
        rows, k = _row_sums(values, channels, constants)
        s1 = tf.reduce_sum(rows - k * shift, axis=rows_axes)
    return _FirstSums(values, channels, tf.shape(x, out_type=tf.int64), shift, s1)


def _squares(first: _FirstSums, constants: SharedConstants) -> ShiftedSums:
    """Complete ``first`` with the center and ``s2``: ``squared_difference(x, center)`` summed by rows, then the rows."""
    import tensorflow as tf

    with tf.compat.v1.name_scope("accurate_sums"):
        n = tf.cast(tf.size(first.values, out_type=tf.int64) // tf.size(first.s1, out_type=tf.int64), tf.float32)
        center = first.shift + first.s1 / n
        squares = _row_sums(tf.math.squared_difference(first.values, center), first.channels, constants)[0]
        s2 = tf.reduce_sum(squares, axis=constants.get_constant([0, 1], tf.int32))
    return ShiftedSums(first.count, first.shift, first.s1, center, s2)


def shifted_sums(x, channel_axes: list[int], constants: SharedConstants, shift=None) -> ShiftedSums:
    """The shifted sums of ``x`` per channel (module docstring); ``shift`` as in :func:`_first_sums`. ``count`` is the
    shape of ``x`` (the host divides its size by the channels)."""
    return _squares(_first_sums(x, channel_axes, constants, shift), constants)


class VarianceSums(NamedTuple):
    """A fused node's route for its input (module docstring): ``count``, ``shift`` (the node's mean) and ``s1`` as in
    :class:`ShiftedSums`; ``variance`` the node's Bessel-corrected batch variance, ``sum((x - shift)**2) / (n - 1)``."""

    count: object
    shift: object
    s1: object
    variance: object


class FusedInputSums:
    """Both routes for the input ``x`` of a training-mode fused node with batch ``mean`` (output 1) and
    Bessel-corrected ``variance`` (output 2) (module docstring): :attr:`from_variance` takes the squares from the
    node, :meth:`accurate` sums them (its ops are added to the graph on first use: call it in the graph's context).

    :attr:`values_per_row` is the static size of ``x`` over its first axis and its channels (None if unknown): with
    ``r`` rows a batch has ``r * values_per_row`` values per channel, which :meth:`needs_accurate` compares with
    ``FUSED_SQUARES_MAX_COUNT``.
    """

    def __init__(self, x, channel_axes: list[int], constants: SharedConstants, mean, variance) -> None:
        self._first = _first_sums(x, channel_axes, constants, mean)
        self._constants = constants
        self._accurate: ShiftedSums | None = None
        self.from_variance = VarianceSums(self._first.count, self._first.shift, self._first.s1, variance)
        dims = x.shape.as_list()
        inner = [d for axis, d in enumerate(dims) if axis and axis not in channel_axes]
        self.values_per_row = None if None in inner or 0 in channel_axes else int(np.prod(inner, dtype=np.int64))

    def needs_accurate(self, rows: int) -> bool:
        """Whether a batch of ``rows`` rows (the first axis of ``x``) needs :meth:`accurate`."""
        count = None if self.values_per_row is None else rows * self.values_per_row
        return count is None or not 1 < count <= FUSED_SQUARES_MAX_COUNT

    def accurate(self) -> ShiftedSums:
        if self._accurate is None:
            self._accurate = _squares(self._first, self._constants)
        return self._accurate


def _moments_from_sums(n, shift, s1, center, s2) -> tuple[np.ndarray, np.ndarray]:
    """Mean and M2 in float64 from the sums (module docstring); ``n`` per channel, or one count for all."""
    mean = shift + s1 / n
    return mean, np.maximum(s2 - n * np.square(mean - center), 0.0)


def batch_moments(shape, shift, s1, center, s2) -> BatchMoments:
    """The host side of one BN input's :class:`ShiftedSums` (module docstring): fetched ``shape`` of ``x``, ``shift``,
    ``s1``, ``center``, ``s2`` -> count, mean, M2 in float64."""
    shift, s1, center, s2 = (np.asarray(v, np.float64).reshape(-1) for v in (shift, s1, center, s2))
    count = int(np.prod(np.asarray(shape, np.int64))) // max(s1.size, 1)  # values per channel
    return BatchMoments(count, *_moments_from_sums(max(count, 1), shift, s1, center, s2))


def per_group(moments: BatchMoments, channels: int | None) -> list[BatchMoments]:
    """Ghost BN's moments of one input (taken per group and channel, group-major: the sums of ``x`` reshaped to
    ``[V, groups, ...]`` with the groups and the channels kept) as one entry per group of ``channels`` values;
    ``channels`` None: any other input's moments, as they are."""
    if channels is None:
        return [moments]
    return [BatchMoments(moments.count, moments.mean[k : k + channels], moments.m2[k : k + channels])
            for k in range(0, moments.mean.size, channels)]


class SumsFetch:
    """Every BN input's sums of one run as two fetched tensors, and their moments formed on the host at once.

    ``tensors``: the float32 per-channel vectors of all inputs concatenated (every shift, then every ``s1``, every
    center, every ``s2`` or variance), and their shapes concatenated (int64), then their channel counts when not
    static. ``session.run`` costs ~20 us per fetched tensor in Python (hundreds per batch for a deep network) and
    the host formula runs once over all channels instead of once per input.
    """

    def __init__(self, sums: list[ShiftedSums | VarianceSums]) -> None:
        import tensorflow as tf

        def flat(tensor):
            tensor = tf.cast(tensor, tf.float32)
            return tensor if tensor.shape.rank == 1 else tf.reshape(tensor, [-1])

        self._ranks = [int(s.count.shape[0]) for s in sums]
        self._channels = [s.s1.shape.num_elements() for s in sums]
        self._from_variance = [isinstance(s, VarianceSums) for s in sums]
        groups = ([s.shift for s in sums], [s.s1 for s in sums],
                  [s.shift if isinstance(s, VarianceSums) else s.center for s in sums],
                  [s.variance if isinstance(s, VarianceSums) else s.s2 for s in sums])
        self.tensors = [tf.concat([flat(t) for group in groups for t in group], 0),
                        tf.concat([s.count for s in sums], 0)]
        if None in self._channels:
            self.tensors.append(tf.stack([tf.size(s.s1, out_type=tf.int64) for s in sums]))

    def moments(self, values: list[np.ndarray]) -> list[BatchMoments]:
        """``values``: the fetched ``tensors`` -> one :class:`BatchMoments` per input, in order."""
        channels = self._channels if len(values) == 2 else [int(c) for c in values[2]]
        shapes, ends = np.asarray(values[1], np.int64).tolist(), np.cumsum(self._ranks).tolist()
        counts = [math.prod(shapes[end - rank : end]) // max(c, 1) for rank, end, c in zip(self._ranks, ends, channels)]
        shift, s1, center, s2 = np.asarray(values[0], np.float64).reshape(4, -1)
        n = np.repeat(np.maximum(counts, 1), channels).astype(np.float64)
        bessel = np.repeat(self._from_variance, channels)
        s2 = np.where(bessel, s2 * (n - 1), s2)
        mean, m2 = _moments_from_sums(n, shift, s1, center, s2)
        ends = np.cumsum(channels).tolist()
        return [BatchMoments(count, mean[end - c : end], m2[end - c : end]) for count, c, end in zip(counts, channels, ends)]
