"""Accurate per-channel batch moments as TensorFlow ops, shared by every measuring session (TF1 graphs, frozen
graphs, SavedModels, Keras models).

For a BN input ``x`` the device computes, per channel, a *shift* ``s`` close to the batch mean and the shifted sums
``s1 = sum(x - s)``, ``s2 = sum((x - s)**2)`` over every axis but the channels, in float32; only these vectors and
the shape of ``x`` leave the device. The host forms, in float64 (:func:`batch_moments`)::

    n = size(x) / channels,   mean = s + s1 / n,   M2 = max(s2 - s1**2 / n, 0)

The sums are matrix products with a vector of ones per sample row (:func:`_row_sums`): a GEMM accumulates in
blocks, so its float32 sum stays ~1e-7 relative, where TensorFlow's CPU ``reduce_sum`` / ``reduce_mean`` over
outer axes and ``FusedBatchNormV3``'s own statistics add the values one after another (issue 14 item 7: 0.12
of sqrt(var + eps) on a published model's 32x187x96 activation). The shift keeps ``s1`` small and ``M2`` free of
cancellation when ``|mean| >> std`` (docs/performance.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ckptfix.errors import GraphError
from ckptfix.stats import BatchMoments


class ShiftedSums(NamedTuple):
    """Graph tensors of one BN input's shifted sums (flat, per channel; module docstring): ``count`` the shape of
    ``x`` (its size over the channels: the values per channel), the ``shift``, ``s1 = sum(x - shift)`` and
    ``s2 = sum((x - shift)**2)``."""

    count: object
    shift: object
    s1: object
    s2: object



class SharedConstants(dict):
    """Constants shared by the accurate sums of every BN input (one per value: creating ops in a big graph is slow)."""

    def get_constant(self, value, dtype):
        import tensorflow as tf

        key = (repr(value), dtype)
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


def shifted_sums(x, channel_axes: list[int], constants: SharedConstants, shift=None) -> ShiftedSums:
    """The shifted sums of ``x`` (float32) per channel; ``shift`` (flat, per channel) defaults to ``reduce_mean(x)``
    (float32: within a few standard deviations of the mean, which is all a shift needs).

    ``s1`` sums each row unshifted (one pass over ``x``, no ``x - shift`` written) and shifts the row sums:
    ``sum_rows(row - k * shift)``; ``s2`` sums ``squared_difference(x, shift)`` by rows, then the rows. ``count``
    is the shape of ``x`` (the host divides its size by the channels).
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
        s2 = tf.reduce_sum(_row_sums(tf.math.squared_difference(values, shift), channels, constants)[0], axis=rows_axes)
    return ShiftedSums(tf.shape(x, out_type=tf.int64), shift, s1, s2)


def batch_moments(shape, shift, s1, s2) -> BatchMoments:
    """The host side (module docstring): fetched ``shape`` of ``x``, ``shift``, ``s1``, ``s2`` -> count, mean, M2 in float64."""
    shift, s1, s2 = (np.asarray(v, np.float64).reshape(-1) for v in (shift, s1, s2))
    count = int(np.prod(np.asarray(shape, np.int64))) // max(s1.size, 1)  # values per channel
    n = max(count, 1)
    return BatchMoments(count, shift + s1 / n, np.maximum(s2 - s1 * s1 / n, 0.0))
