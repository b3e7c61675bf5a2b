"""BN layer discovery and feed detection on small graphs built here (TF2 control flow, resource variables);
the TF1 / tf-slim graph shapes are covered end to end in test_slim_recalibration.py."""

import pytest
import tensorflow as tf

from ckptfix.errors import GraphError
from ckptfix.graph.batchnorm import find_batchnorm_layers
from ckptfix.graph.feeds import detect_feeds
from ckptfix.graph.index import GraphIndex

v1 = tf.compat.v1


def _moving(channels: int):
    return (v1.get_variable("moving_mean", initializer=tf.zeros([channels]), trainable=False),
            v1.get_variable("moving_variance", initializer=tf.ones([channels]), trainable=False))


def analyse(build) -> tuple[GraphIndex, list]:
    graph = tf.Graph()
    with graph.as_default():
        build()
    index = GraphIndex(graph.as_graph_def())
    return index, find_batchnorm_layers(index)


def test_one_cond_selecting_mean_and_variance_together():
    """slim's fused=False pattern: mean and variance from one tf.cond (one If op with two outputs)."""

    def build():
        x = v1.placeholder(tf.float32, [None, 4, 4, 3], name="images")
        flag = v1.placeholder_with_default(False, [], name="is_training")
        with v1.variable_scope("bn"):
            moving_mean, moving_variance = _moving(3)
            mean, variance = v1.cond(flag, lambda: tf.nn.moments(x, [0, 1, 2]),
                                     lambda: (tf.identity(moving_mean), tf.identity(moving_variance)))
            tf.nn.batch_normalization(x, mean, variance, None, None, 1e-3)

    index, layers = analyse(build)
    assert [(l.name, l.kind, l.mean_variable, l.variance_variable) for l in layers] == [
        ("bn", "non-fused", "bn/moving_mean", "bn/moving_variance")
    ]
    assert detect_feeds(index, layers) == detect_feeds(index, layers, "images", "is_training:0")
    assert detect_feeds(index, layers).training_flag == "is_training:0"


def test_normalisation_without_moving_statistics_is_not_batchnorm():
    def build():
        x = v1.placeholder(tf.float32, [None, 8], name="features")
        mean, variance = tf.nn.moments(x, [1], keepdims=True)  # layer norm
        tf.nn.batch_normalization(x, mean, variance, None, None, 1e-5)

    assert analyse(build)[1] == []


def _two_layer_graph(extra_input: bool = False, extra_flag: bool = False):
    def build():
        x = v1.placeholder(tf.float32, [None, 4, 4, 3], name="images")
        flag = v1.placeholder_with_default(False, [], name="is_training")
        if extra_input:
            x = x + v1.placeholder(tf.float32, [None, 4, 4, 3], name="noise")
        if extra_flag:
            flag = tf.logical_and(flag, v1.placeholder(tf.bool, [], name="other_flag"))
        for scope in ("a", "b"):
            with v1.variable_scope(scope):
                moving_mean, moving_variance = _moving(3)
                x, _, _ = v1.cond(
                    flag,
                    lambda: v1.nn.fused_batch_norm(x, tf.ones([3]), tf.zeros([3]), is_training=True),
                    lambda: v1.nn.fused_batch_norm(x, tf.ones([3]), tf.zeros([3]), moving_mean, moving_variance,
                                                   is_training=False),
                )

    return analyse(build)


def test_fused_layers_inside_if_functions_are_found_in_order():
    index, layers = _two_layer_graph()
    assert [(l.name, l.kind, len(l.fused_nodes)) for l in layers] == [("a", "fused", 2), ("b", "fused", 2)]
    assert [node.is_training for node in layers[0].fused_nodes] == [True, False] or \
        sorted(node.is_training for node in layers[0].fused_nodes) == [False, True]
    assert all(node.function for node in layers[0].fused_nodes)
    assert detect_feeds(index, layers).input == "images:0"


def test_ambiguous_input_lists_the_candidates():
    index, layers = _two_layer_graph(extra_input=True)
    with pytest.raises(GraphError, match=r"several possible inputs \(images:0, noise:0\).*--input"):
        detect_feeds(index, layers)
    assert detect_feeds(index, layers, input_name="noise").input == "noise:0"


def test_several_inputs_are_all_fed_when_the_data_names_each():
    index, layers = _two_layer_graph(extra_input=True)
    assert detect_feeds(index, layers, data_keys=lambda: ["noise", "images:0", "labels"]).inputs == ("images:0", "noise:0")
    assert detect_feeds(index, layers, input_name="noise:0,images").inputs == ("noise:0", "images:0")
    assert detect_feeds(index, layers, input_name=["images", "noise"]).input == "images:0,noise:0"
    with pytest.raises(GraphError, match=r"keys images, nosie, none for noise:0"):
        detect_feeds(index, layers, data_keys=lambda: ["images", "nosie"])
    with pytest.raises(GraphError, match=r"arrays for input noise:0, which --input leaves out"):
        detect_feeds(index, layers, input_name="images", data_keys=lambda: ["images", "noise"])


def test_ambiguous_training_flag_lists_the_candidates():
    index, layers = _two_layer_graph(extra_flag=True)
    with pytest.raises(GraphError, match=r"is_training:0, other_flag:0.*--training-flag"):
        detect_feeds(index, layers)


def _save(build, folder) -> str:
    graph = tf.Graph()
    with graph.as_default():
        build()
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return saver.save(session, str(folder / "model.ckpt"))


@pytest.mark.parametrize("fused", [False, True])
def test_bn_on_the_input_gets_the_data_statistics(tmp_path, fused):
    """BN applied to the fed tensor itself: the new statistics are numpy's statistics of the data."""
    import numpy as np

    import ckptfix

    def build():
        x = v1.placeholder(tf.float32, [None, 4, 4, 3], name="images")
        flag = v1.placeholder_with_default(False, [], name="is_training")
        with v1.variable_scope("bn"):
            moving_mean, moving_variance = _moving(3)
            if fused:
                v1.cond(flag, lambda: v1.nn.fused_batch_norm(x, tf.ones([3]), tf.zeros([3]))[0],
                        lambda: v1.nn.fused_batch_norm(x, tf.ones([3]), tf.zeros([3]), moving_mean,
                                                       moving_variance, is_training=False)[0])
            else:
                mean, variance = v1.cond(flag, lambda: tf.nn.moments(x, [0, 1, 2]),
                                         lambda: (tf.identity(moving_mean), tf.identity(moving_variance)))
                tf.nn.batch_normalization(x, mean, variance, None, None, 1e-3)

    prefix = _save(build, tmp_path / "train")
    data = np.random.default_rng(0).normal(5.0, 2.0, (50, 4, 4, 3)).astype(np.float32)
    report = ckptfix.recalibrate(prefix, data, output=tmp_path / "out", batch_size=8)
    values = data.reshape(-1, 3).astype(np.float64)
    (layer,) = report.layers
    assert layer.kind == ("fused" if fused else "non-fused") and layer.count == 50 * 16
    np.testing.assert_allclose(layer.new_mean, values.mean(0), rtol=1e-5)
    np.testing.assert_allclose(layer.new_variance, values.var(0, ddof=1 if fused else 0), rtol=1e-5)
