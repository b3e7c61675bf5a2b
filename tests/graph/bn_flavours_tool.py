"""Small TF1 graphs (``disable_v2_behavior()``: VariableV2, Switch/Merge) with the BatchNorm flavours users wrote,
saved as checkpoint + ``.meta`` with moving statistics never updated, and the reference statistics of each BN layer.

    bn_flavours_tool.py OUTDIR CASE [CASE ...]

Cases:

``chiron``  chiron's hand-written BN (``chiron/cnn.py`` ``batchnorm``, copied in spirit): ``tf.cond(training,
            batch_statistics, population_statistics)`` with ``tf.nn.moments`` and ``pop_mean`` / ``pop_var`` assigned
            in the batch branch; input ``signal [16, 32]`` reshaped with its static batch to ``[16, 1, 32, 1]``, two
            conv + BN + relu layers, a ``model.json`` beside the checkpoint (chiron's eval script reads it).

``ghost``    ``tf.compat.v1.layers.batch_normalization(virtual_batch_size=8)`` twice (conv -> ghost BN -> relu), training
            flag an ``is_training`` placeholder_with_default(False); samples with per-sample offsets, so that the
            within-group variance (what the layer's update estimates, `--estimator batch-mean`) is well below the population's.
``ghost_baked`` the same with ``training=True`` (training mode baked into the graph, no flag).
``renorm``   conv -> ``batch_normalization(renorm=True)`` -> conv -> plain BN, an ``is_training`` flag, trained
            without update ops; also ``heldout.npy`` and ``training_logits.npy`` (its logits on them in training mode),
            and the trained net as ``frozen.pb`` (``convert_variables_to_constants``, flag kept) and ``saved_model/``
            (``simple_save``, signature input ``images``, output ``logits``).
``ghost_cond_v2`` ``ghost`` built with TF2 control flow (each ``tf.cond`` an ``If`` op) and resource variables.
``chiron_cond_v2`` chiron's BN, then a ``batch_normalization`` layer, built so: chiron's normalisation inside the
            ``If``'s branch functions.
``conv_in_cond_v2`` a conv and hand-written BN both inside each branch of the ``If`` (what ckptfix cannot reach).
``zero_debias`` slim conv + ``batch_norm(zero_debias_moving_mean=True, decay=0.9)``, training mode baked in (no
            reference: the test checks what resumed training does with the repaired checkpoint).

Each case writes ``OUTDIR/CASE/train/model.ckpt{.meta,...}``, ``OUTDIR/CASE/data.npy`` (calibration samples) and
``OUTDIR/CASE/reference.npz``: per BN layer (keyed by its variables' scope) the mean and the biased variance of its
input over all samples, the graph run with the training flag fed True (every BN on batch statistics) on batches of
``BATCH`` in order, in float64; for ghost BN also ``ghost_mean`` / ``ghost_variance``, the mean over the ghost batches of ``VIRTUAL`` samples
of each batch (TensorFlow's reshape to ``[VIRTUAL, -1, ...]`` puts samples g, g + G, ... in group g) of each group's
mean and biased variance (what the layer's update computes). Prints one JSON line ``{case: {"prefix": ..., "batch": ...}}``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

BATCH = 16
SAMPLES = 64
VIRTUAL = 8


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


def _initialised_and_saved(tf, session, folder: Path) -> str:
    """Initialise every variable of the session's graph and save them to ``folder/train/model.ckpt``; the prefix."""
    with session.graph.as_default():
        session.run(tf.compat.v1.global_variables_initializer())
        saver = tf.compat.v1.train.Saver()
    (folder / "train").mkdir(parents=True)
    return saver.save(session, str(folder / "train" / "model.ckpt"))


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
        with v1.Session(graph=graph) as session:
            prefix = _initialised_and_saved(tf, session, folder)
            data = np.random.default_rng(0).normal(3.0, 4.0, size=(SAMPLES, 32)).astype(np.float32)
            fetched = {name: [] for name in taps}
            for start in range(0, SAMPLES, BATCH):
                values = session.run(taps, {signal: data[start:start + BATCH], training: True})
                for name, value in values.items():
                    fetched[name].append(value)
    (folder / "train" / "model.json").write_text(json.dumps({"cnn": {"model": "tiny"}, "rnn": {"layer_num": 0}}) + "\n")
    np.save(folder / "data.npy", data)
    np.savez(folder / "reference.npz", **_reference(fetched))
    return {"prefix": prefix, "batch": BATCH, "output": logits.name}


def _reference(fetched: dict[str, list[np.ndarray]], virtual: int | None = None) -> dict[str, np.ndarray]:
    reference = {}
    for name, values in fetched.items():
        channels = values[0].shape[-1]
        flat = np.concatenate(values).astype(np.float64).reshape(-1, channels)
        reference[f"{name}/mean"], reference[f"{name}/variance"] = flat.mean(0), flat.var(0)
        if virtual:
            # reshape(batch, [V, -1, ...]): group g holds samples g, g + G, g + 2G... (G = batch / V)
            groups = [v[g::len(v) // virtual].astype(np.float64).reshape(-1, channels) for v in values
                      for g in range(len(v) // virtual)]
            reference[f"{name}/ghost_mean"] = np.mean([g.mean(0) for g in groups], axis=0)
            reference[f"{name}/ghost_variance"] = np.mean([g.var(0) for g in groups], axis=0)
    return reference


def build_renorm(tf, folder: Path) -> dict:
    """conv -> ``batch_normalization(renorm=True)`` -> conv -> plain ``batch_normalization`` -> dense, flag
    ``is_training``, trained 40 Adam steps without the update ops (renorm_mean / renorm_stddev and the moving
    statistics all keep their initial 0 / 1). Also writes ``heldout.npy`` (samples training never saw) and
    ``training_logits.npy``: the trained net's logits on them with the flag fed True (batch statistics, r and d),
    all in one batch (its statistics close to the population's): what inference has to reproduce."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    rng = np.random.default_rng(3)
    data = rng.normal(1.0, 2.0, (16 * SAMPLES, 6, 6, 3)).astype(np.float32)
    heldout = rng.normal(1.0, 2.0, (16 * SAMPLES, 6, 6, 3)).astype(np.float32)
    labels = (data.mean(axis=(1, 2)).argmax(-1)).astype(np.int64)
    with graph.as_default():
        v1.set_random_seed(0)
        images = v1.placeholder(tf.float32, [None, 6, 6, 3], name="images")
        targets = v1.placeholder(tf.int64, [None], name="labels")
        training = v1.placeholder_with_default(False, [], name="is_training")
        net = v1.layers.conv2d(images, 4, 3, padding="same", name="conv0")
        net = tf.nn.relu(v1.layers.batch_normalization(net, renorm=True, training=training, name="bn0"))
        net = v1.layers.conv2d(net, 4, 3, padding="same", name="conv1")
        net = tf.nn.relu(v1.layers.batch_normalization(net, training=training, name="bn1"))
        logits = v1.layers.dense(tf.reduce_mean(net, axis=[1, 2]), 3, name="logits")
        loss = v1.losses.sparse_softmax_cross_entropy(targets, logits)
        step = v1.train.AdamOptimizer(0.01).minimize(loss)  # UPDATE_OPS forgotten
        saver = v1.train.Saver()
        train = folder / "train"
        train.mkdir(parents=True)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for k in range(40):
                first = (k * BATCH) % len(data)
                session.run(step, {images: data[first:first + BATCH], targets: labels[first:first + BATCH], training: True})
            prefix = saver.save(session, str(train / "model.ckpt"))
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), [logits.op.name])
            (folder / "frozen.pb").write_bytes(frozen.SerializeToString())
            v1.saved_model.simple_save(session, str(folder / "saved_model"), {"images": images}, {"logits": logits})
            fetched = {"bn0": [], "bn1": []}
            for first in range(0, len(data), BATCH):
                conv0, conv1 = session.run(["conv0/BiasAdd:0", "conv1/BiasAdd:0"],
                                           {images: data[first:first + BATCH], training: True})
                fetched["bn0"].append(conv0)
                fetched["bn1"].append(conv1)
            held = session.run(logits, {images: heldout, training: True})
    np.save(folder / "data.npy", data)
    np.save(folder / "heldout.npy", heldout)
    np.save(folder / "training_logits.npy", held)
    np.savez(folder / "reference.npz", **_reference(fetched))
    return {"prefix": prefix, "batch": BATCH, "output": logits.name}


def _build_ghost(tf, folder: Path, baked: bool) -> dict:
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        images = v1.placeholder(tf.float32, [None, 6, 6, 3], name="images")
        training = True if baked else v1.placeholder_with_default(False, [], name="is_training")
        net, taps = images, {}
        for k in range(2):
            net = v1.layers.conv2d(net, 4, 3, padding="same", name=f"conv{k}")
            taps[f"bn{k}"] = net.name
            net = tf.nn.relu(v1.layers.batch_normalization(net, virtual_batch_size=VIRTUAL, training=training,
                                                          name=f"bn{k}"))
        logits = v1.layers.dense(tf.reduce_mean(net, axis=[1, 2]), 3, name="logits")
        saver = v1.train.Saver()
        train = folder / "train"
        train.mkdir(parents=True)
        rng = np.random.default_rng(1)
        data = (rng.normal(0.0, 1.0, (SAMPLES, 6, 6, 3)) + rng.normal(0.0, 2.0, (SAMPLES, 1, 1, 3))).astype(np.float32)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = saver.save(session, str(train / "model.ckpt"))
            fetched = {name: [] for name in taps}
            feed = {} if baked else {training: True}
            for start in range(0, SAMPLES, BATCH):
                values = session.run(taps, {images: data[start:start + BATCH], **feed})
                for name, value in values.items():
                    fetched[name].append(value)
    np.save(folder / "data.npy", data)
    np.savez(folder / "reference.npz", **_reference(fetched, VIRTUAL))
    return {"prefix": prefix, "batch": BATCH, "output": logits.name}


def build_zero_debias(tf, folder: Path) -> dict:
    """slim conv + ``batch_norm(zero_debias_moving_mean=True, decay=0.9)``, training mode baked in, update ops never
    run: ``moving_mean``, ``moving_mean/biased`` and ``local_step`` stay 0."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import slim_compat  # noqa: F401  (patches TF before tf_slim is imported)
    import tf_slim as slim

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        images = v1.placeholder(tf.float32, [None, 6, 6, 3], name="images")
        net = slim.conv2d(images, 4, 3, scope="conv1", normalizer_fn=slim.batch_norm,
                          normalizer_params={"is_training": True, "zero_debias_moving_mean": True, "decay": 0.9})
        logits = slim.fully_connected(slim.flatten(net), 3, activation_fn=None, scope="logits")
        saver = v1.train.Saver()
        train = folder / "train"
        train.mkdir(parents=True)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = saver.save(session, str(train / "model.ckpt"))
    data = np.random.default_rng(2).normal(2.0, 3.0, (SAMPLES, 6, 6, 3)).astype(np.float32)
    np.save(folder / "data.npy", data)
    return {"prefix": prefix, "batch": BATCH, "output": logits.name}


def build_chiron_cond_v2(tf, folder: Path) -> dict:
    """conv -> chiron's BN (``conv0_bn``) -> relu -> conv -> ``batch_normalization`` (``bn1``) -> relu -> mean, flag
    ``training``: each ``tf.cond`` an ``If`` op (run under :func:`_control_flow_v2`), chiron's whole normalisation in
    its branch functions; ``reference.npz`` as for ``chiron``, of ``conv0_bn`` and ``bn1``."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    data = np.random.default_rng(4).normal(2.0, 3.0, (SAMPLES, 6, 6, 3)).astype(np.float32)
    with graph.as_default():
        v1.set_random_seed(0)
        images = v1.placeholder(tf.float32, [None, 6, 6, 3], name="images")
        training = v1.placeholder_with_default(False, [], name="training")
        conv0 = v1.layers.conv2d(images, 4, 3, padding="same", name="conv0")
        net = tf.nn.relu(_chiron_batchnorm(tf, conv0, "conv0_bn", training))
        conv1 = v1.layers.conv2d(net, 4, 3, padding="same", name="conv1")
        net = tf.nn.relu(v1.layers.batch_normalization(conv1, training=training, name="bn1"))
        logits = tf.reduce_mean(net, axis=[1, 2], name="logits")
        with v1.Session(graph=graph) as session:
            prefix = _initialised_and_saved(tf, session, folder)
            fetched = {"conv0_bn": [], "bn1": []}
            for start in range(0, SAMPLES, BATCH):  # pop_mean / pop_var move in memory only: the checkpoint is saved
                values = session.run([conv0, conv1], {images: data[start:start + BATCH], training: True})
                fetched["conv0_bn"].append(values[0])
                fetched["bn1"].append(values[1])
    np.save(folder / "data.npy", data)
    np.savez(folder / "reference.npz", **_reference(fetched))
    return {"prefix": prefix, "batch": BATCH, "output": logits.name}


def build_conv_in_cond_v2(tf, folder: Path) -> dict:
    """``tf.cond(training, conv + BN on batch moments (updating pop_mean / pop_var), conv + BN on pop_mean / pop_var)``
    (``conv0_bn``) under :func:`_control_flow_v2`: the tensor normalised is computed inside each branch function, out
    of ckptfix's reach. Also ``frozen.pb`` (``convert_variables_to_constants``)."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        images = v1.placeholder(tf.float32, [None, 6, 6, 3], name="images")
        training = v1.placeholder_with_default(False, [], name="training")
        kernel = v1.get_variable("conv0/kernel", [3, 3, 3, 4])
        with v1.variable_scope("conv0_bn"):
            pop_mean = v1.get_variable("pop_mean", [4], initializer=v1.zeros_initializer(), trainable=False)
            pop_var = v1.get_variable("pop_var", [4], initializer=v1.ones_initializer(), trainable=False)

        def batch_statistics():
            h = tf.nn.conv2d(images, kernel, 1, "SAME")
            mean, variance = tf.nn.moments(h, [0, 1, 2])
            with tf.control_dependencies([v1.assign(pop_mean, 0.9 * pop_mean + 0.1 * mean),
                                          v1.assign(pop_var, 0.9 * pop_var + 0.1 * variance)]):
                return tf.nn.batch_normalization(h, mean, variance, None, None, 1e-5)

        def population_statistics():
            return tf.nn.batch_normalization(tf.nn.conv2d(images, kernel, 1, "SAME"), pop_mean, pop_var, None, None, 1e-5)

        net = tf.nn.relu(v1.cond(training, batch_statistics, population_statistics))
        logits = tf.reduce_mean(net, axis=[1, 2], name="logits")
        with v1.Session(graph=graph) as session:
            prefix = _initialised_and_saved(tf, session, folder)
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), [logits.op.name])
            (folder / "frozen.pb").write_bytes(frozen.SerializeToString())
    np.save(folder / "data.npy", np.random.default_rng(4).normal(2.0, 3.0, (SAMPLES, 6, 6, 3)).astype(np.float32))
    return {"prefix": prefix, "batch": BATCH, "output": logits.name}


def _control_flow_v2(build):
    """``build`` run with TF2 control flow (``tf.cond`` -> ``If`` ops, branch functions) and resource variables, in
    this otherwise TF1 process (ghost BN keeps its TF1 reshape to ``[V, -1, ...]``)."""
    def built(tf, folder: Path) -> dict:
        tf.compat.v1.enable_control_flow_v2()
        tf.compat.v1.enable_resource_variables()
        try:
            return build(tf, folder)
        finally:
            tf.compat.v1.disable_control_flow_v2()
            tf.compat.v1.disable_resource_variables()

    return built


CASES = {"chiron": build_chiron, "zero_debias": build_zero_debias, "renorm": build_renorm, "ghost": lambda tf, folder: _build_ghost(tf, folder, baked=False),
         "ghost_baked": lambda tf, folder: _build_ghost(tf, folder, baked=True),
         "ghost_cond_v2": _control_flow_v2(lambda tf, folder: _build_ghost(tf, folder, baked=False)),
         "chiron_cond_v2": _control_flow_v2(build_chiron_cond_v2),
         "conv_in_cond_v2": _control_flow_v2(build_conv_in_cond_v2)}


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers is tf_keras's on TensorFlow >= 2.16
    import tensorflow as tf

    tf.compat.v1.disable_v2_behavior()
    outdir = Path(argv[0])
    print(json.dumps({case: CASES[case](tf, outdir / case) for case in argv[1:]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
