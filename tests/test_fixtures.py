"""The fixture models themselves (tests/fixtures): every variant builds, writes the files the
ckptfix tests rely on, has the graph shape it claims, and shows the stale signature, i.e. high
accuracy with batch statistics and chance with the moving ones. No ckptfix code is used here. (The stale
signature in a fresh eval process and the BN inputs are exercised by tests/graph/test_slim_recalibration.py.)"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from fixtures.runner import (
    MAX_INFERENCE_ACCURACY,
    MIN_TRAINING_ACCURACY,
    VARIANTS,
    SlimModel,
)
from fixtures.slim_models import SIDE_FEATURES, load_inputs

CONV = {"conv1/BatchNorm": ("fused", "NHWC", 4, 8), "conv2/BatchNorm": ("fused", "NHWC", 4, 16)}
# variant -> (input tensor, training flag tensor, {scope: (kind, data_format, rank, channels)})
EXPECTED = {
    "seed": ("images:0", None, CONV),
    "nonfused_pretrained": ("images:0", None, {
        "conv1/BatchNorm": ("non-fused", "NHWC", 4, 8), "conv2/BatchNorm": ("non-fused", "NHWC", 4, 16),
    }),
    "placeholder_cond": ("images:0", "is_training:0", CONV),
    "tf2_control_flow": ("images:0", "is_training:0", CONV),
    "inference_only": ("images:0", None, CONV),
    "nchw": ("images:0", None, {**CONV, "conv2/BatchNorm": ("fused", "NCHW", 4, 16)}),
    "dense": ("images:0", None, {**CONV, "fc1/BatchNorm": ("fused", "NHWC", 2, 32)}),
    "queue_input": ("IteratorGetNext:0", None, CONV),
    "two_inputs": ("images:0", None, {**CONV, "side_fc/BatchNorm": ("fused", "NHWC", 2, 8)}),
    "layers_api": ("images:0", None, {
        "conv1/batch_normalization": ("fused", "NHWC", 4, 8), "conv2/batch_normalization": ("fused", "NHWC", 4, 16),
    }),
}


@pytest.fixture(scope="module", autouse=True)
def _build_selected_variants_concurrently(request, slim_model):
    """Build the variants this module's selected tests use, as many at once as there are cores."""
    slim_model.prebuild(
        item.callspec.params["variant"]
        for item in request.session.items
        if item.module is request.module
        and hasattr(item, "callspec")
        and "variant" in item.callspec.params
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_build_writes_checkpoint_data_and_info(slim_model, variant):
    model: SlimModel = slim_model(variant)
    step = model.info["global_step"]
    assert model.prefix == str(model.train_dir / f"model.ckpt-{step}")
    for suffix in (".index", ".data-00000-of-00001", ".meta"):
        assert (model.train_dir / f"model.ckpt-{step}{suffix}").is_file()
    # Saver writes the path it was given, absolute here, as most training scripts do.
    assert f'model_checkpoint_path: "{model.prefix}"' in (model.train_dir / "checkpoint").read_text()

    calib, eval_x, eval_y = load_inputs(model.calib), load_inputs(model.eval_x), np.load(model.eval_y)
    if variant == "two_inputs":  # .npz files: images and side features
        assert model.info["inputs"] == ["images:0", "side:0"]
        for inputs in (calib, eval_x):
            assert inputs["side"].shape == (256, SIDE_FEATURES) and inputs["side"].dtype == np.float32
        calib, eval_x = calib["images"], eval_x["images"]
    assert calib.shape == (256, 12, 12, 3) and calib.dtype == np.float32
    assert -1.0 <= calib.min() and calib.max() <= 1.0
    assert eval_x.shape == (256, 12, 12, 3) and eval_x.dtype == np.float32
    assert np.bincount(eval_y).tolist() == [64, 64, 64, 64]
    pngs = sorted(model.images_dir.glob("*.png"))
    assert len(pngs) == 64 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    input_name, flag_name, layers = EXPECTED[variant]
    info = model.info
    assert (info["variant"], info["input"], info["training_flag"]) == (variant, input_name, flag_name)
    assert info["bn_layers"] == list(layers)
    assert {
        scope: (layer["kind"], layer["data_format"], layer["rank"], layer["channels"])
        for scope, layer in info["layers"].items()
    } == layers


@pytest.mark.parametrize("variant", VARIANTS)
def test_stale_signature(slim_model, variant):
    accuracy = slim_model(variant).info["accuracy"]  # measured by the build, as `evaluate` does
    assert accuracy["training"] >= MIN_TRAINING_ACCURACY, accuracy
    assert accuracy["inference"] <= MAX_INFERENCE_ACCURACY, accuracy


@pytest.mark.parametrize("variant", VARIANTS)
def test_moving_statistics_are_never_updated_by_fine_tuning(slim_model, variant):
    import tensorflow as tf

    model = slim_model(variant)
    reader = tf.train.load_checkpoint(model.prefix)
    for scope in model.bn_layers:
        mean = reader.get_tensor(f"{scope}/moving_mean")
        variance = reader.get_tensor(f"{scope}/moving_variance")
        if variant == "nonfused_pretrained":  # left over from the pretraining domain
            assert np.all(mean != 0.0) and np.all(variance != 1.0), scope
        else:  # the initial values
            assert np.all(mean == 0.0) and np.all(variance == 1.0), scope


def _meta_graph_nodes(model: SlimModel):
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString(model.meta.read_bytes())
    return meta.graph_def.node, meta.graph_def.library.function


@pytest.mark.parametrize("variant", VARIANTS)
def test_meta_graph_has_the_shape_of_the_variant(slim_model, variant):
    model = slim_model(variant)
    nodes, functions = _meta_graph_nodes(model)
    by_op = collections.defaultdict(list)
    for node in nodes:
        by_op[node.op].append(node)
    fused = {node.name: node for node in by_op["FusedBatchNormV3"]}
    in_functions = [n for f in functions for n in f.node_def if n.op == "FusedBatchNormV3"]

    if variant == "nonfused_pretrained":
        assert not fused and {n.name for n in by_op["Mean"]} >= {
            "conv1/BatchNorm/moments/mean", "conv2/BatchNorm/moments/mean"}
    elif variant == "placeholder_cond":  # TF1 cond: one node per branch and layer
        branches = ("FusedBatchNormV3", "FusedBatchNormV3_1")
        assert sorted(fused) == [f"conv{i}/BatchNorm/cond/{b}" for i in (1, 2) for b in branches]
        assert by_op["Switch"] and by_op["Merge"] and not by_op["If"]
        assert "is_training" in {n.name for n in by_op["PlaceholderWithDefault"]}
        assert any(n.name.startswith("dropout/") for n in nodes)
    elif variant == "tf2_control_flow":  # BN nodes live in If branch functions
        assert not fused and len(in_functions) >= 4 and by_op["VarHandleOp"]
        assert {n.name for n in by_op["If"]} == {"conv1/BatchNorm/cond", "conv2/BatchNorm/cond"}
    else:
        expected = [scope + "/FusedBatchNormV3" for scope in model.bn_layers]
        assert sorted(fused) == sorted(expected)
        training = variant != "inference_only"
        assert all(node.attr["is_training"].b == training for node in fused.values())
    if variant == "inference_only":
        assert not any(n.name.startswith("gradients/") for n in nodes)
    if variant == "nchw":
        assert fused["conv2/BatchNorm/FusedBatchNormV3"].attr["data_format"].s == b"NCHW"
    if variant == "dense":  # slim's own fused path: batch statistics from empty constants
        assert fused["fc1/BatchNorm/FusedBatchNormV3"].input[3] == "fc1/BatchNorm/Const_1"
    if variant == "queue_input":
        assert [n.name for n in by_op["IteratorGetNext"]] == ["IteratorGetNext"]
        assert "images" not in {n.name for n in nodes}


def test_png_images_hold_the_first_calibration_samples(slim_model):
    import tensorflow as tf

    model = slim_model("seed")
    calib = np.load(model.calib)
    for i, path in enumerate(sorted(model.images_dir.glob("*.png"))):
        pixels = tf.io.decode_png(path.read_bytes()).numpy()
        np.testing.assert_array_equal(pixels.astype(np.float32) / 127.5 - 1.0, calib[i], err_msg=path.name)
