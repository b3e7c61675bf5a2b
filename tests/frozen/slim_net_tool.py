"""A checkpoint of one of tf-slim's own networks, saved without a ``.meta`` (``write_meta_graph=False``).

Run as a script in a fresh process (TF1 behaviour is a process-wide switch)::

    slim_net_tool.py NET OUTDIR

NET is a key of :data:`NETS` (the network function, its arg_scope, keyword arguments, the input shape and the
input of its first BN layer). Writes ``OUTDIR/model.ckpt`` (no ``.meta``) with freshly initialised weights, so
the moving statistics hold their initial values 0 / 1, stale for any data; ``OUTDIR/calib.npy`` (64 random
images in [-1, 1]); and ``OUTDIR/first_bn_input.npy``, the first BN layer's input over them (it depends on
no BN layer, so it is the same in training and inference mode).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

NUM_CLASSES = 4
#: name -> (module in tf_slim.nets, function, arg_scope function, keyword arguments, input shape, first BN input)
NETS = {
    "resnet_v1_50": ("resnet_v1", "resnet_v1_50", "resnet_arg_scope", {}, (32, 32, 3), "resnet_v1_50/conv1/Conv2D:0"),
}


def _network(name: str):
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import slim_compat  # noqa: F401
    import importlib

    import tf_slim as slim

    module_name, function, arg_scope, kwargs, shape, _ = NETS[name]
    module = importlib.import_module(f"tf_slim.nets.{module_name}")
    tf.compat.v1.disable_v2_behavior()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        images = tf.compat.v1.placeholder(tf.float32, (None, *shape), name="input")
        with slim.arg_scope(getattr(module, arg_scope)()):
            getattr(module, function)(images, num_classes=NUM_CLASSES, is_training=True, **kwargs)
        saver = tf.compat.v1.train.Saver()
    return tf, graph, images, saver, shape


def main(argv) -> int:
    name, out = argv[0], Path(argv[1])
    tf, graph, images, saver, shape = _network(name)
    out.mkdir(parents=True, exist_ok=True)
    calib = np.random.default_rng(0).uniform(-1, 1, (64, *shape)).astype(np.float32)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        saver.save(sess, str(out / "model.ckpt"), write_meta_graph=False)
        first_bn_input = sess.run(graph.get_tensor_by_name(NETS[name][-1]), {images: calib})
    np.save(out / "calib.npy", calib)
    np.save(out / "first_bn_input.npy", first_bn_input)
    print(json.dumps({"prefix": str(out / "model.ckpt")}), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
