"""Output detection on ordinary graphs (issue 14 item 4): a loss fed by labels beside the real output, and logits
beside their softmax, each leave one output: the logits."""

import tensorflow as tf

from ckptfix.graph.outputs import detect_output


def _dense(x, units: int, name: str):
    """A dense layer from raw ops (tf.compat.v1.layers needs tf-keras' legacy layers)."""
    with tf.compat.v1.variable_scope(name):
        kernel = tf.compat.v1.get_variable("kernel", (x.shape[-1], units))
        bias = tf.compat.v1.get_variable("bias", (units,), initializer=tf.compat.v1.zeros_initializer())
        return tf.nn.bias_add(tf.matmul(x, kernel), bias)


def _classifier(with_loss: bool, sigmoid: bool, labels_from_queue: bool = False):
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        if labels_from_queue:
            queue = v1.FIFOQueue(4, [tf.float32, tf.float32], shapes=[[6], [3]])
            images, labels = queue.dequeue_many(2, name="batch")
        else:
            images = v1.placeholder(tf.float32, (None, 6), name="images")
            labels = v1.placeholder(tf.float32, (None, 3), name="labels")
        hidden = tf.nn.relu(_dense(images, 8, "hidden"))
        logits = _dense(hidden, 3, "logits_layer")
        with v1.name_scope("model"):
            (tf.sigmoid if sigmoid else tf.nn.softmax)(logits)
        if with_loss:
            with v1.name_scope("metrics"):
                tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits, name="xentropy")
    return graph, images, logits


def test_a_loss_needing_labels_is_not_an_output_and_logits_with_their_activation_are_one():
    for sigmoid in (False, True):
        graph, images, logits = _classifier(with_loss=True, sigmoid=sigmoid)
        assert detect_output(graph, images) == [logits.name]


def test_labels_from_the_input_pipeline_are_not_fed_either():
    graph, images, logits = _classifier(with_loss=True, sigmoid=True, labels_from_queue=True)
    assert detect_output(graph, images) == [logits.name]


def test_two_unrelated_heads_stay_ambiguous():
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, (None, 6), name="images")
        first = _dense(images, 3, "head_a")
        second = _dense(images, 4, "head_b")
    assert sorted(detect_output(graph, images)) == sorted([first.name, second.name])


def test_4d_logits_feeding_predictions_and_a_loss_squeeze_are_one_output_the_predictions():
    """tf-slim resnet_v1 (no spatial squeeze in tf-slim 1.1.0): (N, 1, 1, K) logits feed both
    ``predictions`` (slim.softmax: Reshape, Softmax, Reshape) and the ``Squeeze`` a loss reads (issue 24 item 4)."""
    from ckptfix.compat import enable_tf_slim

    enable_tf_slim()
    import tf_slim as slim
    from tf_slim.nets import resnet_v1

    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, (None, 16, 16, 3), name="images")
        labels = tf.compat.v1.placeholder(tf.int64, (None,), name="labels")
        blocks = [resnet_v1.resnet_v1_block("block1", base_depth=2, num_units=1, stride=2)]
        with slim.arg_scope(resnet_v1.resnet_arg_scope()):
            logits, _ = resnet_v1.resnet_v1(images, blocks, num_classes=5, is_training=True, scope="resnet_small")
        tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, tf.squeeze(logits, [1, 2]))
    assert logits.shape.rank == 4
    assert detect_output(graph, images) == ["resnet_small/predictions/Softmax:0"]

