"""Benchmark -- what the training guards cost against the training step they guard.

Two real training setups on the CPU, random weights and random batches:

* TF1: tf-slim ``resnet_v1_50`` (53 BN layers), ``slim.learning.create_train_op`` with Momentum, in a
  ``MonitoredTrainingSession`` with ``BatchNormGuardHook`` (TF1 ref variables: ``disable_v2_behavior()``, so this
  part runs in a child process);
* Keras 3: ``keras.applications.ResNet50(weights=None)`` (53 BN layers) with SGD, ``train_on_batch``, and
  ``BatchNormGuard``'s read.

For each it times, alternately in one session, a training step and one guard read (every BN layer's moving mean
and variance plus the 8 smallest trained variables), and reports the medians and the read's share of
``every_n_steps`` steps -- the fraction of training time the default guard adds.

    .venv/bin/python benchmarks/guard_overhead.py          # 96x96x3, batch 16: ~2 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def tf1(size: int, batch: int, rounds: int) -> dict:
    import tensorflow as tf

    sys.path.insert(0, str(ROOT / "tests"))
    import slim_compat  # noqa: F401  (tf-slim 1.1.0 under TF 2.21)
    import tf_slim as slim
    from tf_slim.nets import resnet_v1

    from ckptfix.guard import BatchNormGuardHook

    tf.compat.v1.disable_v2_behavior()
    images = tf.random.normal([batch, size, size, 3])
    labels = tf.random.uniform([batch], 0, 10, dtype=tf.int64)
    with slim.arg_scope(resnet_v1.resnet_arg_scope()):
        logits, _ = resnet_v1.resnet_v1_50(images, num_classes=10, is_training=True)
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, tf.squeeze(logits, [1, 2]))
    train_op = slim.learning.create_train_op(loss, tf.compat.v1.train.MomentumOptimizer(0.01, 0.9))
    hook = BatchNormGuardHook()
    with tf.compat.v1.train.MonitoredTrainingSession(hooks=[hook], save_checkpoint_secs=None,
                                                     save_summaries_steps=None) as session:
        raw = session._tf_sess()  # the session the hook reads with (no hooks run around it)
        for _ in range(3):
            session.run(train_op)
        steps, reads = [], []
        for _ in range(rounds):
            steps.append(_timed(lambda: raw.run(train_op)))
            reads.append(_timed(lambda: hook._plan.read(raw, 0)))
    return {"layers": len(hook._plan.layers), "fetched": len(hook._plan.fetches), "step": statistics.median(steps),
            "read": statistics.median(reads)}


def keras3(size: int, batch: int, rounds: int) -> dict:
    import keras
    import numpy as np

    from ckptfix.guard import BatchNormGuard

    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=10)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, batch)
    for _ in range(3):
        model.train_on_batch(x, y)
    guard = BatchNormGuard(model)
    steps, reads = [], []
    for _ in range(rounds):
        steps.append(_timed(lambda: model.train_on_batch(x, y)))
        reads.append(_timed(lambda: guard._read(0, None, None)))
    return {"layers": len(guard.watched_layers), "step": statistics.median(steps), "read": statistics.median(reads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--every-n-steps", type=int, default=10)
    parser.add_argument("--part", choices=("tf1", "keras3"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.part:
        result = (tf1 if args.part == "tf1" else keras3)(args.size, args.batch, args.rounds)
        print(json.dumps(result))
        return
    print(f"{args.size}x{args.size}x3, batch {args.batch}, medians of {args.rounds} rounds; guard read every "
          f"{args.every_n_steps} steps")
    for part in ("tf1", "keras3"):
        done = subprocess.run([sys.executable, __file__, "--part", part, "--size", str(args.size), "--batch",
                               str(args.batch), "--rounds", str(args.rounds)], capture_output=True, text=True,
                              check=True)
        result = json.loads(done.stdout.splitlines()[-1])
        share = result["read"] / (args.every_n_steps * result["step"])
        print(f"{part:7s} {result['layers']} BN layers: step {result['step'] * 1e3:.0f} ms, guard read "
              f"{result['read'] * 1e3:.2f} ms = {share:.3%} of {args.every_n_steps} steps")


if __name__ == "__main__":
    main()
