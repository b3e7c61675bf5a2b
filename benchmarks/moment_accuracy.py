"""Accuracy of per-batch per-channel moments on large activations, route by route (issue 14 item 7).

Random normal channels (mean 100 / std 1 and mean 0.673 / std 0.032, float32) of 32xHxW values per channel
per batch; per route, the worst channel's mean error in sqrt(var + eps) and variance error in (var + eps)
(eps 1e-3), against float64 numpy on the same float32 values. Routes: the fused node's own outputs 1/2 (what
ckptfix fetched before), float32 ``reduce_mean`` / ``reduce_sum``, sums shifted by the fused mean with
``reduce_sum``, float64, and ckptfix's shifted sums as matrix products (``graph/model.py``).

    PYTHONPATH=. .venv/bin/python benchmarks/moment_accuracy.py       # ~1 minute
"""

from __future__ import annotations

import numpy as np


def _m2(shift, s1, center, s2, n):
    """M2 from shifted sums, as ``graph/sums.py``'s ``batch_moments`` forms it."""
    return s2 - n * (shift + s1 / n - center) ** 2


def main() -> None:
    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    import tensorflow as tf

    from ckptfix.graph.sums import FUSED_SQUARES_MAX_COUNT, SharedConstants, shifted_sums

    rng = np.random.default_rng(1)
    means, stds, eps = np.array([100.0, 0.673, 500.0], np.float32), np.array([1.0, 0.032, 1.0], np.float32), 1e-3
    print("| values per channel per batch | route | mean error / sqrt(var+eps) | variance error / (var+eps) |")
    print("| --- | --- | --- | --- |")
    for height, width in [(35, 35), (45, 45), (64, 64), (187, 96), (299, 299)]:
        x = rng.standard_normal((32, height, width, 3), np.float32) * stds + means
        flat = x.reshape(-1, 3).astype(np.float64)
        n = flat.shape[0]
        reference_mean, reference_variance = flat.mean(0), flat.var(0, ddof=1)
        tensor = tf.constant(x)
        _, fused_mean, fused_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=tensor, scale=tf.ones(3), offset=tf.zeros(3), mean=tf.zeros(0), variance=tf.zeros(0), epsilon=eps,
            is_training=True)
        m = fused_mean.numpy().astype(np.float64)
        routes = {"fused outputs 1/2 (before)": (m, fused_variance.numpy().astype(np.float64) * (n - 1))}
        mean32 = tf.reduce_mean(tensor, [0, 1, 2])
        routes["`reduce_mean`, `reduce_sum` of squared deviations (float32)"] = (
            mean32.numpy().astype(np.float64), tf.reduce_sum(tf.square(tensor - mean32), [0, 1, 2]).numpy().astype(np.float64))
        deviations = tensor - fused_mean
        s1 = tf.reduce_sum(deviations, [0, 1, 2]).numpy().astype(np.float64)
        s2 = tf.reduce_sum(tf.square(deviations), [0, 1, 2]).numpy().astype(np.float64)
        routes["shifted by the fused mean, `reduce_sum`"] = (m + s1 / n, s2 - s1 * s1 / n)
        wide = tf.cast(tensor, tf.float64)
        mean64 = tf.reduce_mean(wide, [0, 1, 2])
        routes["float64 `reduce_mean`, `reduce_sum`"] = (mean64.numpy(), tf.reduce_sum(tf.square(wide - mean64), [0, 1, 2]).numpy())
        _, shift, s1, center, s2 = (np.asarray(t, np.float64) for t in shifted_sums(tensor, [3], SharedConstants(), shift=fused_mean))
        around_shift = tf.matmul(tf.ones([1, height * width]), tf.reshape(tf.math.squared_difference(tensor, fused_mean),
                                                                        [32, height * width, 3]))
        old_s2 = tf.reduce_sum(around_shift, [0, 1]).numpy().astype(np.float64)
        routes["squares around the fused mean, matrix products (before)"] = (shift + s1 / n, _m2(shift, s1, shift, old_s2, n))
        routes[f"**matrix products, squares around the center (now, above {FUSED_SQUARES_MAX_COUNT:,})**"] = (shift + s1 / n, _m2(shift, s1, center, s2, n))
        fused_squares = fused_variance.numpy().astype(np.float64) * (n - 1)
        routes[f"**fused variance, mean by a matrix product (now, up to {FUSED_SQUARES_MAX_COUNT:,})**"] = (shift + s1 / n, _m2(shift, s1, shift, fused_squares, n))
        scale = np.sqrt(reference_variance + eps)
        for k, (name, (mean, m2)) in enumerate(routes.items()):
            mean_error = np.max(np.abs(mean - reference_mean) / scale)
            variance_error = np.max(np.abs(m2 / (n - 1) - reference_variance) / (reference_variance + eps))
            size = f"32×{height}×{width} = {n:,}" if k == 0 else ""
            print(f"| {size} | {name} | {mean_error:.1e} | {variance_error:.1e} |")


if __name__ == "__main__":
    main()
