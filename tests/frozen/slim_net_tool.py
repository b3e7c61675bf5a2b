"""A checkpoint of one of tf-slim's own networks, saved without a ``.meta`` (``write_meta_graph=False``).

Run as a script in a fresh process (TF1 behaviour is a process-wide switch)::

    slim_net_tool.py save NET OUTDIR
    slim_net_tool.py tensor NET PREFIX X.npy TENSOR OUT.npy

NET is a key of :data:`NETS` (the network function, its arg_scope, keyword arguments, the input shape).
``save`` writes ``OUTDIR/model.ckpt`` (no ``.meta``) with freshly initialised weights: the moving statistics
hold their initial values 0 / 1, stale for any data, and ``OUTDIR/calib.npy`` (64 random images in [-1, 1]).
``tensor``: the value of one tensor of the network (built for training, the checkpoint restored) over X.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

NUM_CLASSES = 4
#: name -> (module in tf_slim.nets, function, arg_scope function, keyword arguments, input shape)
NETS = {
    "resnet_v1_50": ("resnet_v1", "resnet_v1_50", "resnet_arg_scope", {}, (32, 32, 3)),
    "inception_v2": ("inception_v2", "inception_v2", "inception_v2_arg_scope", {"depth_multiplier": 0.25}, (64, 64, 3)),
}


def _network(name: str):
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import slim_compat  # noqa: F401
    import importlib

    import tf_slim as slim

    module_name, function, arg_scope, kwargs, shape = NETS[name]
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
    tf, graph, images, saver, shape = _network(argv[1])
    with tf.compat.v1.Session(graph=graph) as sess:
        if argv[0] == "save":
            out = Path(argv[2])
            out.mkdir(parents=True, exist_ok=True)
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(out / "model.ckpt"), write_meta_graph=False)
            rng = np.random.default_rng(0)
            np.save(out / "calib.npy", rng.uniform(-1, 1, (64, *shape)).astype(np.float32))
            result = {"prefix": str(out / "model.ckpt")}
        else:
            prefix, x, tensor, out = argv[2:6]
            saver.restore(sess, prefix)
            value = sess.run(graph.get_tensor_by_name(tensor), {images: np.load(x)})
            np.save(out, value)
            result = {"shape": list(value.shape)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
