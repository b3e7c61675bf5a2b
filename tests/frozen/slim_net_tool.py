"""A checkpoint of one of tf-slim's own networks, saved without a ``.meta`` (``write_meta_graph=False``).

Run as a script in a fresh process (TF1 behaviour is a process-wide switch)::

    slim_net_tool.py NET OUTDIR

NET is a key of :data:`NETS` (the network function, its arg_scope, keyword arguments, the input shape and the
input of its first BN layer). The network is trained :data:`STEPS` Adam steps in training mode without its update
ops (UPDATE_OPS forgotten) on :func:`images`' task, so the moving statistics hold their initial values 0 / 1, stale
for the data, while its decisions are the trained ones (a freshly initialised net's decisions are noise that no
statistics reproduce: the repair gate rightly refuses them). Writes ``OUTDIR/model.ckpt`` (no ``.meta``);
``OUTDIR/calib.npy`` (256 images the training never saw); ``OUTDIR/heldout.npy`` / ``heldout_labels.npy`` (256
more, labelled) and ``heldout_training_logits.npy`` (the trained net's logits on them in training mode, in batches of
``BATCH``: what inference has to reproduce); and ``OUTDIR/first_bn_input.npy``, the first BN layer's input over the calibration images (it
depends on no BN layer, so it is the same in training and inference mode).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

NUM_CLASSES = 4
STEPS, BATCH = 20, 32
#: name -> (module in tf_slim.nets, function, arg_scope function, keyword arguments, input shape, first BN input)
NETS = {
    "resnet_v1_50": ("resnet_v1", "resnet_v1_50", "resnet_arg_scope", {}, (32, 32, 3), "resnet_v1_50/conv1/Conv2D:0"),
}


def images(rng: np.random.Generator, count: int, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images uniform in [-1, 1] and their labels: class k (of 3) brightens colour channel k by 1."""
    labels = rng.integers(0, 3, count)
    pixels = rng.uniform(-1, 1, (count, *shape)).astype(np.float32)
    pixels[np.arange(count), ..., labels] += 1.0
    return pixels, labels


def _network(name: str):
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import slim_compat  # noqa: F401
    import importlib

    import tf_slim as slim

    module_name, function, arg_scope, kwargs, shape, _ = NETS[name]
    module = importlib.import_module(f"tf_slim.nets.{module_name}")
    tf.compat.v1.disable_v2_behavior()
    tf.config.experimental.enable_op_determinism()  # the same trained weights on every run: the same gate margins
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        inputs = tf.compat.v1.placeholder(tf.float32, (None, *shape), name="input")
        labels = tf.compat.v1.placeholder(tf.int64, (None,), name="labels")
        with slim.arg_scope(getattr(module, arg_scope)()):
            logits, _ = getattr(module, function)(inputs, num_classes=NUM_CLASSES, is_training=True, **kwargs)
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, tf.reshape(logits, [-1, NUM_CLASSES]))
        step = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss)  # UPDATE_OPS forgotten
        saver = tf.compat.v1.train.Saver()
    return tf, graph, (inputs, labels, step, logits), saver, shape


def main(argv) -> int:
    name, out = argv[0], Path(argv[1])
    tf, graph, (inputs, labels, step, logits), saver, shape = _network(name)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train, train_labels = images(rng, STEPS * BATCH, shape)
    calib, _ = images(rng, 256, shape)
    heldout, heldout_labels = images(rng, 256, shape)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for first in range(0, len(train), BATCH):
            sess.run(step, {inputs: train[first:first + BATCH], labels: train_labels[first:first + BATCH]})
        saver.save(sess, str(out / "model.ckpt"), write_meta_graph=False)
        first_bn_input = sess.run(graph.get_tensor_by_name(NETS[name][-1]), {inputs: calib})
        training_logits = np.concatenate([sess.run(logits, {inputs: heldout[first:first + BATCH]})
                                          for first in range(0, len(heldout), BATCH)])
    np.save(out / "calib.npy", calib)
    np.save(out / "heldout.npy", heldout)
    np.save(out / "heldout_labels.npy", heldout_labels)
    np.save(out / "heldout_training_logits.npy", training_logits.reshape(len(heldout), -1))
    np.save(out / "first_bn_input.npy", first_bn_input)
    print(json.dumps({"prefix": str(out / "model.ckpt")}), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
