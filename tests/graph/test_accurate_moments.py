"""Statistics stay exact on large activations (issue 14 item 7): with 32x187x96 = 574,464 values per channel per
batch and means hundreds of standard deviations from zero, float32 accumulated one value after another (TF's CPU
FusedBatchNormV3 batch mean, ``reduce_mean``) is off by more than 1e-3 of sqrt(var + eps). The recalibrated
statistics must match a float64 reference to 1e-3 of sqrt(var + eps) (mean) and 1e-3 relative (var + eps), for a
fused layer (top-level node, and inside If branches) and a non-fused one, with no reduction duplicated."""

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from ckptfix.demo import fused_batch_norm, moments_batch_norm
from ckptfix.graph.batchnorm import find_batchnorm_layers
from ckptfix.graph.feeds import detect_feeds
from ckptfix.graph.index import GraphIndex
from ckptfix.graph.meta import load_meta_graph
from ckptfix.graph.model import GraphModel

v1 = tf.compat.v1
SHAPE = (187, 96)
MEANS = np.array([500.0, -200.0, 0.673], np.float32)
STDS = np.array([1.0, 0.5, 0.032], np.float32)


def _baked(images):
    """Training mode baked in (no flag), with update ops as Keras and tf.layers build them: a top-level fused node
    reading the moving statistics (exponential_avg_factor 0.01) and tf.nn.moments arithmetic."""
    from tensorflow.python.training.moving_averages import assign_moving_average

    outputs = []
    for scope in ("fused", "nonfused"):
        with v1.variable_scope(scope):
            channels = images.shape[-1]
            gamma = v1.get_variable("gamma", [channels], initializer=v1.ones_initializer())
            beta = v1.get_variable("beta", [channels], initializer=v1.zeros_initializer())
            moving_mean = v1.get_variable("moving_mean", [channels], initializer=v1.zeros_initializer(), trainable=False)
            moving_variance = v1.get_variable("moving_variance", [channels], initializer=v1.ones_initializer(),
                                              trainable=False)
            if scope == "fused":
                y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                    x=images, scale=gamma, offset=beta, mean=moving_mean.read_value(),
                    variance=moving_variance.read_value(), epsilon=1e-3, exponential_avg_factor=0.01, is_training=True)
                updates = [moving_mean.assign(mean), moving_variance.assign(variance)]
            else:
                x = tf.identity(images)  # a layer per tensor
                mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
                y = tf.nn.batch_normalization(x, mean, variance, beta, gamma, 1e-3)
                updates = [assign_moving_average(moving_mean, mean, 0.99),
                           assign_moving_average(moving_variance, variance, 0.99)]
            for update in updates:
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, update)
            outputs.append(y)
    return outputs[0] + outputs[1]


def _flagged(images):
    """A training-flag placeholder: TF2 control flow (If ops) around both layers."""
    is_training = v1.placeholder_with_default(False, [], name="is_training")
    return (fused_batch_norm(images, is_training, "fused/BatchNorm")
            + moments_batch_norm(tf.identity(images), is_training, "nonfused/BatchNorm"))


@pytest.fixture(scope="module", params=["baked", "flagged"])
def large_activation_model(request, tmp_path_factory):
    """A checkpoint + .meta of two BN layers on the input itself, and 2 batches of 32 offset samples."""
    folder = tmp_path_factory.mktemp(request.param)
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, *SHAPE, len(MEANS)], name="images")
        logits = tf.reduce_mean((_baked if request.param == "baked" else _flagged)(images), axis=[1, 2], name="logits")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(session, str(folder / "model.ckpt"))
    assert logits is not None
    rng = np.random.default_rng(7)
    data = (rng.standard_normal((64, *SHAPE, len(MEANS)), np.float32) * STDS + MEANS).astype(np.float32)
    return request.param, prefix, data


def test_statistics_match_float64_on_large_offset_activations(large_activation_model, tmp_path):
    _, prefix, data = large_activation_model
    report = ckptfix.recalibrate(prefix, data, output=tmp_path / "out", batch_size=32, shuffle=False,
                                 agreement_samples=0)
    values = data.reshape(-1, data.shape[-1]).astype(np.float64)
    assert {layer.name.split("/")[0] for layer in report.layers} == {"fused", "nonfused"}
    for layer in report.layers:
        assert layer.count == values.shape[0]
        ddof = 1 if layer.variance_convention == "bessel" else 0
        mean, variance = values.mean(0), values.var(0, ddof=ddof)
        scale = np.sqrt(variance + layer.epsilon)
        assert np.max(np.abs(layer.new_mean - mean) / scale) <= 1e-3, layer.name
        assert np.max(np.abs(layer.new_variance - variance) / (variance + layer.epsilon)) <= 1e-3, layer.name


def test_one_accurate_sum_per_moment_and_bn_input(large_activation_model):
    """Per BN input, exactly two matrix-product sums (shifted first and second moments) at this size (above
    FUSED_SQUARES_MAX_COUNT values per channel): none duplicated for the two uses of a non-fused layer's input, no
    float32 reduction added for a top-level fused node."""
    variant, prefix, data = large_activation_model
    meta_graph = load_meta_graph(prefix + ".meta")
    index = GraphIndex(meta_graph.graph_def)
    layers = find_batchnorm_layers(index)
    with GraphModel(meta_graph, layers, detect_feeds(index, layers, None, None), prefix) as model:
        model.moments(data[:32])
        added = [op for op in model.graph.get_operations() if op.name.startswith("ckptfix/")]
        sums = [op.name for op in added if op.type in {"MatMul", "BatchMatMulV2"}]
        means = [op.name for op in added if op.type in {"Mean", "Sum", "SquaredDifference"} and "/accurate_sums" not in op.name]
    inputs = sum(len(moments) for moments in model._fetches.values())
    assert inputs == 2 and len(sums) == 2 * inputs, sums
    # the shift: reduce_mean for the non-fused layer; the fused node's own mean where the graph returns it (a top-level
    # node), else (an If that returns only y) reduce_mean
    assert len(means) == (1 if variant == "baked" else 2), means


def _reshaping_model(folder, rows_per_sample: int):
    """One fused BN node (training mode baked in) on the input reshaped to ``rows_per_sample`` rows per sample: its BN
    input has more rows than the batch has samples."""
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, *SHAPE, len(MEANS)], name="images")
        x = tf.reshape(images, [-1, SHAPE[0], SHAPE[1] // rows_per_sample, len(MEANS)])
        with v1.variable_scope("fused"):
            gamma = v1.get_variable("gamma", [len(MEANS)], initializer=v1.ones_initializer())
            beta = v1.get_variable("beta", [len(MEANS)], initializer=v1.zeros_initializer())
            moving_mean = v1.get_variable("moving_mean", [len(MEANS)], initializer=v1.zeros_initializer(), trainable=False)
            moving_variance = v1.get_variable("moving_variance", [len(MEANS)], initializer=v1.ones_initializer(),
                                              trainable=False)
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=moving_mean.read_value(), variance=moving_variance.read_value(),
                epsilon=1e-3, exponential_avg_factor=0.01, is_training=True)
            for update in (moving_mean.assign(mean), moving_variance.assign(variance)):
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, update)
        tf.reduce_mean(y, axis=[1, 2], name="logits")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return v1.train.Saver().save(session, str(folder / "model.ckpt"))


@pytest.mark.parametrize("samples", [2, 8])
def test_fused_variance_route_by_values_per_batch(tmp_path, samples):
    """A top-level fused node's squares come from its own variance up to FUSED_SQUARES_MAX_COUNT values per channel
    per batch (one matrix product), from a second product above; a BN input with more rows than the batch has
    samples (a reshape) is found larger than predicted and its batch run again with the second product. Both routes
    match float64 within 1e-3 on means 500 std from zero."""
    from ckptfix.graph.sums import FUSED_SQUARES_MAX_COUNT

    prefix = _reshaping_model(tmp_path, rows_per_sample=2)
    meta_graph = load_meta_graph(prefix + ".meta")
    index = GraphIndex(meta_graph.graph_def)
    layers = find_batchnorm_layers(index)
    batch = (np.random.default_rng(3).standard_normal((samples, *SHAPE, len(MEANS)), np.float32) * STDS + MEANS)
    values = batch.reshape(-1, len(MEANS)).astype(np.float64)
    with GraphModel(meta_graph, layers, detect_feeds(index, layers, None, None), prefix) as model:
        per_layer, _ = model.moments(batch)
        (moments,) = per_layer.values()
        products = [op for op in model.graph.get_operations() if op.name.startswith("ckptfix/")
                    and op.type in {"MatMul", "BatchMatMulV2"}]
    predicted = samples * SHAPE[0] * (SHAPE[1] // 2)
    assert predicted <= FUSED_SQUARES_MAX_COUNT
    assert len(products) == (1 if moments[0].count <= FUSED_SQUARES_MAX_COUNT else 2)
    assert moments[0].count == values.shape[0] == 2 * predicted
    variance = values.var(0)
    scale = np.sqrt(variance + 1e-3)
    assert np.max(np.abs(moments[0].mean - values.mean(0)) / scale) <= 1e-3
    assert np.max(np.abs(moments[0].m2 / values.shape[0] - variance) / (variance + 1e-3)) <= 1e-3
