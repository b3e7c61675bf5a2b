"""Benchmark 2 -- ckptfix against the usual workaround: running the graph's own UPDATE_OPS over calibration data.

The workaround (learning rate 0, or just the update ops) moves each moving statistic toward the batch
statistics with the decay the graph was saved with: after k batches the stale value still weighs ``decay**k``.
Here a stale tf-slim ResNet-v1-50 saved with slim's Inception decay 0.9997 gets

* ckptfix: ``recalibrate`` over the calibration set (one pass);
* the workaround: the saved graph restored, its ``UPDATE_OPS`` run batch after batch (cycling over the same
  calibration set) for as long as the whole ckptfix call took -- the equal time budget --, then the moving
  statistics read back.

Errors are against the exact statistics of the calibration set, pooled in float64 on the host from the fetched
BN inputs (benchmarks/host_fetch.py): for the mean, |error| / std; for the variance, |ratio - 1|; the worst over
all channels of all 53 layers, and the median over layers of each layer's worst. How many batches the
workaround would need to reach ckptfix's error is extrapolated from ``decay**k`` (the stale part shrinks by
``decay`` per batch, whatever the data); what it converges to even then is measured exactly: an exponential
average of per-batch statistics tends to their plain average, which is what ``--estimator batch-mean``
computes.

    .venv/bin/python benchmarks/ema_workaround.py      # ~4 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402
import host_fetch  # noqa: E402


def errors(estimate: dict, exact: dict) -> tuple[float, float, float, float]:
    """(worst mean error, median-over-layers mean error, worst variance error, median variance error)."""
    mean_err, var_err = [], []
    for name, (mean, variance) in exact.items():
        est_mean, est_var = estimate[name]
        mean_err.append(float(np.max(np.abs(est_mean - mean) / np.sqrt(variance))))
        var_err.append(float(np.max(np.abs(est_var / variance - 1))))
    return max(mean_err), float(np.median(mean_err)), max(var_err), float(np.median(var_err))


def run_update_ops(info: dict, batches: list[np.ndarray], budget: float) -> tuple[dict, int, float]:
    """Run the saved UPDATE_OPS over ``batches`` (cycling) for ``budget`` seconds; (statistics, batches, s)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(info["prefix"] + ".meta", clear_devices=True)
        session = tf.compat.v1.Session(graph=graph)
        saver.restore(session, info["prefix"])
        update_ops = [graph.get_operation_by_name(name) for name in info["update_ops"]]
        images = graph.get_tensor_by_name(info["input"])
        update = tf.group(*update_ops)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables() if "moving_" in v.op.name}
    start = time.perf_counter()
    steps = 0
    while time.perf_counter() - start < budget:
        session.run(update, {images: batches[steps % len(batches)]})
        steps += 1
    seconds = time.perf_counter() - start
    values = session.run(variables)
    session.close()
    statistics = {}
    for name, value in values.items():
        scope, kind = name.rsplit("/", 1)
        statistics.setdefault(scope, [None, None])[0 if kind == "moving_mean" else 1] = value.astype(np.float64)
    return {scope: tuple(pair) for scope, pair in statistics.items()}, steps, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decay", type=float, default=0.9997)
    parser.add_argument("--runs", type=int, default=3, help="ckptfix runs (the median sets the time budget)")
    args = parser.parse_args()

    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    folder = Path(tempfile.mkdtemp(prefix="ckptfix-bench-ema-"))
    try:
        info = _models.build_stale_resnet(folder / "train", args.image_size, decay=args.decay)
        batches = _models.calibration_batches(args.samples, args.image_size, args.batch_size)
        print(f"machine: {_models.machine()}")
        print(f"model: tf-slim ResNet-v1-50 ({info['bn_layers']} BN layers), BN decay {args.decay}, input "
              f"{args.image_size}x{args.image_size}x3, calibration set {args.samples} samples = {len(batches)} "
              f"batches of {args.batch_size}")
        exact, _, _ = host_fetch.exact_statistics(info, batches)
        fixes = [_models.timed_recalibrate(info["prefix"], batches, folder / "out", args.batch_size) for _ in range(args.runs)]
        budget = _models.median([r["whole"] for r in fixes])
        fix = fixes[0]["report"]
        pooled = {layer.name: (layer.new_mean, layer.new_variance) for layer in fix.layers}
        stale = {layer.name: (layer.old_mean, layer.old_variance) for layer in fix.layers}
        batch_mean = _models.timed_recalibrate(info["prefix"], batches, folder / "out", args.batch_size, estimator="batch-mean")
        averaged = {layer.name: (layer.new_mean, layer.new_variance) for layer in batch_mean["report"].layers}
        ema, steps, seconds = run_update_ops(info, batches, budget)

        fix_err, stale_err, ema_err, floor_err = (errors(x, exact) for x in (pooled, stale, ema, averaged))
        per_batch = seconds / steps
        # stale part after k batches: decay**k * initial error; k for it to fall to ckptfix's error
        needed = [math.log(max(fix_err[i], 1e-12) / stale_err[i]) / math.log(args.decay) for i in (0, 2)]
        k_needed = max(needed)

        def cells(err):
            return [f"{err[0]:.1e}", f"{err[1]:.1e}", f"{err[2]:.1e}", f"{err[3]:.1e}"]

        rows = [
            ["stale checkpoint (before)", "", ""] + cells(stale_err),
            ["ckptfix `recalibrate` (pooled, one pass)", str(len(batches)),
             f"{budget:.1f} (whole call, median of {args.runs})"] + cells(fix_err),
            ["UPDATE_OPS, equal time budget", str(steps), f"{seconds:.1f}"] + cells(ema_err),
            ["UPDATE_OPS until the stale part is below ckptfix's error (extrapolated: decay**k)",
             f"{k_needed:,.0f}", f"{k_needed * per_batch:,.0f} (~{k_needed * per_batch / 3600:.1f} h)", "", "", "", ""],
            ["UPDATE_OPS limit as k -> infinity (= plain average of batch statistics)", "inf", "inf"]
            + cells(floor_err),
        ]
        print(_models.table(["method", "batches", "seconds", "mean err, worst", "mean err, median layer",
                             "var err, worst", "var err, median layer"], rows))
        print(f"UPDATE_OPS ran at {per_batch * 1000:.0f} ms/batch; after {steps} batches the stale value still "
              f"weighs decay**k = {args.decay ** steps:.3f}.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
