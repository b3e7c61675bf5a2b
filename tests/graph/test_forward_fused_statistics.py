"""The forward model reads fused BN nodes' own batch mean instead of reducing again, imports no backprop, and stays
exact: on every graph shape where a fused node runs (top level, the taken branch of a TF1 tf.cond, an If's else
branch, a graph exported in inference mode), no float32 reduction is added for it -- only the accurate sums
(matrix products) shifted by its own mean, once per BN input: one for a top-level node at these sizes (its squares
from its own variance), two inside If branches (docs/performance.md) -- and the statistics equal numpy's on the BN
inputs."""

import numpy as np
import pytest

import ckptfix
from ckptfix.graph.batchnorm import find_batchnorm_layers
from ckptfix.graph.feeds import detect_feeds
from ckptfix.graph.model import GraphModel
from ckptfix.graph.index import GraphIndex, is_gradient
from ckptfix.graph.meta import load_meta_graph
from ckptfix.graph.sums import FusedInputSums
from fixtures.runner import bn_inputs

_REDUCTIONS = {"Mean", "Sum", "SquaredDifference"}


def _forward_model(model) -> GraphModel:
    meta_graph = load_meta_graph(model.meta)
    index = GraphIndex(meta_graph.graph_def)
    layers = find_batchnorm_layers(index)
    return GraphModel(meta_graph, layers, detect_feeds(index, layers, None, None), model.prefix)


def _accurate_sums(forward: GraphModel) -> list[str]:
    """The matrix products of the accurate sums (graph/model.py: ``_channel_sums``)."""
    return [op.name for op in forward.graph.get_operations()
            if op.name.startswith("ckptfix/") and op.type in {"MatMul", "BatchMatMulV2"}]


def _added_reductions(forward: GraphModel) -> list[str]:
    """Reductions added over activations: those of the accurate sums reduce only the products' rows (one per
    sample), and are counted with them."""
    return [op.name for op in forward.graph.get_operations()
            if op.name.startswith("ckptfix/") and op.type in _REDUCTIONS and "/accurate_sums" not in op.name]


@pytest.mark.parametrize("variant", ["seed", "placeholder_cond", "tf2_control_flow", "inference_only", "nchw", "dense"])
def test_fused_layers_add_no_reduction(slim_model, variant):
    model = slim_model(variant)
    with _forward_model(model) as forward:
        assert not [op.name for op in forward.graph.get_operations() if is_gradient(op.name)]
        batch = np.load(model.calib)[:8]
        moments, _ = forward.moments(batch)
        assert _added_reductions(forward) == []
        inputs = [sums for per_input in forward._fetches.values() for sums in per_input]
        top_level = [sums for sums in inputs if isinstance(sums, FusedInputSums)]
        assert bool(top_level) == (variant != "tf2_control_flow")
        assert len(_accurate_sums(forward)) == 2 * len(inputs) - len(top_level)
    assert set(moments) == set(model.info["bn_layers"])
    for name, per_input in moments.items():
        for moment in per_input:
            assert moment.count > 1 and np.all(moment.m2 >= 0), name


def test_nonfused_layers_still_reduce_in_graph(slim_model):
    with _forward_model(slim_model("nonfused_pretrained")) as forward:
        assert _added_reductions(forward)


@pytest.mark.parametrize("variant", ["placeholder_cond", "inference_only"])
def test_statistics_read_off_fused_nodes_equal_numpy(slim_model, variant, tmp_path):
    """The tf.cond branch taken on False, and nodes switched from inference mode (the numpy comparison of the
    other graph shapes is in test_slim_recalibration.py)."""
    model = slim_model(variant)
    report = ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "out", batch_size=32,
                                 shuffle=False)
    inputs = bn_inputs(model, model.prefix, model.calib, batch_size=32)
    for layer in report.layers:
        values = inputs[layer.name].astype(np.float64)
        moved = values.reshape(-1, values.shape[-1])
        assert layer.count == moved.shape[0]
        np.testing.assert_allclose(layer.new_mean, moved.mean(0), rtol=1e-4, atol=1e-5, err_msg=layer.name)
        np.testing.assert_allclose(layer.new_variance, moved.var(0, ddof=1), rtol=1e-4, atol=1e-6, err_msg=layer.name)
