"""BN layers frozen while training, in a TF1 training graph: a fused BN node built with ``is_training=False``
in a ``.meta`` that holds a train op (gradients) ran in inference mode while the weights trained, so its stored
statistics are what they were trained against (issue 31 item 4). Both directions: the same graph with the
layer in training mode is not frozen."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from ckptfix.errors import RepairRefused

v1 = tf.compat.v1


def _training_checkpoint(folder, bn_training: bool) -> str:
    """conv -> fused BN (moving statistics of another domain: mean 3, variance 4) -> dense head, a
    GradientDescent train op over the weights, saved with its .meta after a few steps. ``bn_training``: the
    layer is two fused nodes behind the training flag (:func:`ckptfix.demo.fused_batch_norm`), else one node
    with ``is_training=False`` (frozen)."""
    from ckptfix.demo import fused_batch_norm

    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        images = v1.placeholder(tf.float32, [None, 6, 6, 2], name="images")
        labels = v1.placeholder(tf.int64, [None], name="labels")
        kernel = v1.get_variable("conv/kernel", [3, 3, 2, 4], initializer=v1.glorot_uniform_initializer())
        conv = tf.nn.conv2d(images, kernel, 1, "SAME")
        if bn_training:
            normed = fused_batch_norm(conv, v1.placeholder_with_default(False, [], name="is_training"), "bn")
        else:
            with v1.variable_scope("bn"):
                gamma = v1.get_variable("gamma", [4], initializer=v1.ones_initializer())
                beta = v1.get_variable("beta", [4], initializer=v1.zeros_initializer())
                mean = v1.get_variable("moving_mean", [4], initializer=v1.constant_initializer(3.0), trainable=False)
                variance = v1.get_variable("moving_variance", [4], initializer=v1.constant_initializer(4.0),
                                           trainable=False)
                normed = v1.nn.fused_batch_norm(conv, gamma, beta, mean, variance, epsilon=1e-3, is_training=False)[0]
        weights = v1.get_variable("logits/kernel", [4, 2], initializer=v1.glorot_uniform_initializer())
        logits = tf.matmul(tf.reduce_mean(tf.nn.relu(normed), [1, 2]), weights, name="logits")
        loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
        train_op = v1.train.GradientDescentOptimizer(0.05).minimize(loss)
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for _ in range(5):
                x = rng.normal(size=(16, 6, 6, 2)).astype(np.float32)
                session.run(train_op, {images: x, labels: (x.mean((1, 2, 3)) > 0).astype(np.int64)})
            return saver.save(session, str(folder / "train" / "model.ckpt"))


@pytest.mark.parametrize("bn_training", [False, True])
def test_a_fused_layer_in_inference_mode_in_a_training_graph_is_frozen(tmp_path, bn_training):
    prefix = _training_checkpoint(tmp_path, bn_training)
    data = np.random.default_rng(1).normal(size=(512, 6, 6, 2)).astype(np.float32)
    diagnosis = ckptfix.diagnose(prefix, data, batch_size=32)
    (layer,) = diagnosis.layers
    assert layer.frozen is not bn_training
    if bn_training:
        assert diagnosis.to_dict()["layer_labels"]["bn"] != "frozen"
        return
    assert diagnosis.layer_label(layer) == "frozen" and diagnosis.verdict != "stale" and diagnosis.evidence == []
    with pytest.raises(RepairRefused, match="frozen while training.*adapt=True"):
        ckptfix.recalibrate(prefix, data, batch_size=32, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    adapted = ckptfix.recalibrate(prefix, data, batch_size=32, output=tmp_path / "out", adapt=True)
    assert adapted.gate.passed and (tmp_path / "out").is_dir()
