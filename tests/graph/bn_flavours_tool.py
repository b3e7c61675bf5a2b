"""Small TF1 graphs (``disable_v2_behavior()``: VariableV2, Switch/Merge) with the BatchNorm flavours users wrote,
saved as checkpoint + ``.meta`` with moving statistics never updated, and the reference statistics of each BN layer.

    bn_flavours_tool.py OUTDIR CASE [CASE ...]

Cases:

``chiron``  chiron's hand-written BN (``chiron/cnn.py`` ``batchnorm``, copied in spirit): ``tf.cond(training,
            batch_statistics, population_statistics)`` with ``tf.nn.moments`` and ``pop_mean`` / ``pop_var`` assigned
            in the batch branch; input ``signal [16, 32]`` reshaped with its static batch to ``[16, 1, 32, 1]``, two
            conv + BN + relu layers, a ``model.json`` beside the checkpoint (chiron's eval script reads it).

Each case writes ``OUTDIR/CASE/train/model.ckpt{.meta,...}``, ``OUTDIR/CASE/data.npy`` (calibration samples) and
``OUTDIR/CASE/reference.npz``: per BN layer (keyed by its variables' scope) the mean and the biased variance of its
input over all samples, the graph run with the training flag fed True (every BN on batch statistics) on batches of
``BATCH`` in order, in float64. Prints one JSON line ``{case: {"prefix": ..., "batch": ...}}``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

BATCH = 16
SAMPLES = 64


def _chiron_batchnorm(tf, inp, scope, training, decay=0.99, epsilon=1e-5):
    """chiron 0.6.1.1's ``cnn.batchnorm``."""
    with tf.compat.v1.variable_scope(scope):
        size = inp.get_shape().as_list()[-1]
        scale = tf.compat.v1.get_variable("scale", shape=[size], initializer=tf.compat.v1.constant_initializer(0.1))
        offset = tf.compat.v1.get_variable("offset", shape=[size])
        pop_mean = tf.compat.v1.get_variable("pop_mean", shape=[size], initializer=tf.compat.v1.zeros_initializer(),
                                             trainable=False)
        pop_var = tf.compat.v1.get_variable("pop_var", shape=[size], initializer=tf.compat.v1.ones_initializer(),
                                            trainable=False)

        def batch_statistics():
            batch_mean, batch_var = tf.nn.moments(inp, [0, 1, 2])
            train_mean_op = tf.compat.v1.assign(pop_mean, pop_mean * decay + batch_mean * (1 - decay))
            train_var_op = tf.compat.v1.assign(pop_var, pop_var * decay + batch_var * (1 - decay))
            with tf.control_dependencies([train_mean_op, train_var_op]):
                return tf.nn.batch_normalization(inp, batch_mean, batch_var, offset, scale, epsilon)

        def population_statistics():
            return tf.nn.batch_normalization(inp, pop_mean, pop_var, offset, scale, epsilon)

        return tf.compat.v1.cond(training, batch_statistics, population_statistics)


def build_chiron(tf, folder: Path) -> dict:
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        signal = v1.placeholder(tf.float32, shape=[BATCH, 32], name="signal")
        training = v1.placeholder(tf.bool, name="training")
        net = tf.reshape(signal, [BATCH, 1, 32, 1])
        taps = {}
        for k, channels in enumerate((4, 6)):
            kernel = v1.get_variable(f"conv{k}/weights", [1, 3, net.shape[-1], channels])
            net = tf.nn.conv2d(net, kernel, [1, 1, 1, 1], "SAME", name=f"conv{k}/conv")
            taps[f"conv{k}_bn"] = net.name
            net = tf.nn.relu(_chiron_batchnorm(tf, net, f"conv{k}_bn", training))
        logits = tf.reduce_mean(net, axis=[1, 2], name="logits")
        saver = v1.train.Saver()
        train = folder / "train"
        train.mkdir(parents=True)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = saver.save(session, str(train / "model.ckpt"))
            data = np.random.default_rng(0).normal(3.0, 4.0, size=(SAMPLES, 32)).astype(np.float32)
            fetched = {name: [] for name in taps}
            for start in range(0, SAMPLES, BATCH):
                values = session.run(taps, {signal: data[start:start + BATCH], training: True})
                for name, value in values.items():
                    fetched[name].append(value)
    (train / "model.json").write_text(json.dumps({"cnn": {"model": "tiny"}, "rnn": {"layer_num": 0}}) + "\n")
    np.save(folder / "data.npy", data)
    reference = {}
    for name, values in fetched.items():
        flat = np.concatenate(values).astype(np.float64).reshape(-1, values[0].shape[-1])
        reference[f"{name}/mean"], reference[f"{name}/variance"] = flat.mean(0), flat.var(0)
    np.savez(folder / "reference.npz", **reference)
    return {"prefix": prefix, "batch": BATCH, "output": logits.name}


CASES = {"chiron": build_chiron}


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.compat.v1.disable_v2_behavior()
    outdir = Path(argv[0])
    print(json.dumps({case: CASES[case](tf, outdir / case) for case in argv[1:]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
