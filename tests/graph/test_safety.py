"""A forward pass that would execute Python (PyFunc) is refused unless allowed."""

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from ckptfix.errors import GraphError

v1 = tf.compat.v1


@pytest.mark.subprocess
def test_python_callback_upstream_of_bn_is_refused(tmp_path):
    calls = []

    def log_and_pass(values):
        calls.append(len(values))
        return values

    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 2, 2, 3], name="images")
        y = tf.reshape(tf.numpy_function(log_and_pass, [x], tf.float32), [-1, 2, 2, 3])
        with v1.variable_scope("bn"):
            mean = v1.get_variable("moving_mean", initializer=tf.zeros([3]), trainable=False)
            variance = v1.get_variable("moving_variance", initializer=tf.ones([3]), trainable=False)
            v1.nn.fused_batch_norm(y, tf.ones([3]), tf.zeros([3]), mean, variance, is_training=False)
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = saver.save(session, str(tmp_path / "train" / "model.ckpt"))
    data = np.ones((4, 2, 2, 3), np.float32)
    with pytest.raises(GraphError, match=r"execute Python.*\((EagerPyFunc|PyFunc)\).*allow_unsafe_ops=True"):
        ckptfix.recalibrate(prefix, data, output=tmp_path / "out")
    assert not (tmp_path / "out").exists() and calls == []
