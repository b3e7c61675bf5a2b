"""End to end on real tf-slim checkpoints with stale BN statistics (built by tests/fixtures/slim_models.py):
every graph shape of the issue is repaired, statistics equal numpy's on the BN inputs themselves, and
nothing else in the checkpoint changes."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from ckptfix.errors import NoBatchNormError
from fixtures.runner import accuracies, bn_inputs, evaluate

VARIANTS = ["seed", "nonfused_pretrained", "placeholder_cond", "tf2_control_flow", "inference_only", "nchw",
            "dense", "queue_input", "layers_api"]


@pytest.fixture(scope="module", autouse=True)
def _all_variants_built(slim_model):
    """Train every variant up front, two at a time (one per core)."""
    slim_model.prebuild(VARIANTS)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tensors(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_stale_checkpoint_is_repaired(slim_model, variant, tmp_path):
    model = slim_model(variant)
    before = tree_digest(model.root)
    report = ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "fixed", shuffle=False)

    assert tree_digest(model.root) == before, "the input checkpoint folder changed"
    assert [layer.name for layer in report.layers] == model.info["bn_layers"]
    assert {layer.name: layer.kind for layer in report.layers} == {
        name: layer["kind"] for name, layer in model.info["layers"].items()
    }
    assert report.input_tensor == model.info["input"]
    assert report.training_flag == model.info["training_flag"]

    before = accuracies(model, model.prefix)
    stale, training = before["inference"], before["training"]
    repaired = evaluate(model, report.output_checkpoint, "inference")
    assert stale <= 0.45 < 0.9 <= training
    assert repaired >= training - 0.02, (stale, training, repaired)

    old, new = tensors(model.prefix), tensors(report.output_checkpoint)
    statistics = {key for layer in report.layers for key in (layer.mean_key, layer.variance_key)}
    assert set(old) == set(new)
    for key in set(old) - statistics:
        assert old[key].dtype == new[key].dtype and old[key].tobytes() == new[key].tobytes(), key
    for key in statistics:
        assert not np.array_equal(old[key], new[key]), f"{key} was not recalibrated"


def _numpy_statistics(values: np.ndarray, channel_axis: int, bessel: bool) -> tuple[np.ndarray, np.ndarray]:
    moved = np.moveaxis(values.astype(np.float64), channel_axis, -1).reshape(-1, values.shape[channel_axis])
    return moved.mean(axis=0), moved.var(axis=0, ddof=1 if bessel else 0)


@pytest.mark.parametrize("variant", ["seed", "nonfused_pretrained", "nchw", "dense", "tf2_control_flow", "layers_api"])
def test_statistics_equal_numpy_on_the_bn_inputs(slim_model, variant, tmp_path):
    model = slim_model(variant)
    report = ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "out",
                                 batch_size=32, shuffle=False)
    inputs = bn_inputs(model, model.prefix, model.calib, batch_size=32)
    for layer in report.layers:
        layout = model.info["layers"][layer.name]
        channel_axis = 1 if layout["data_format"] == "NCHW" and layout["rank"] == 4 else -1
        mean, variance = _numpy_statistics(inputs[layer.name], channel_axis, layer.variance_convention == "bessel")
        assert layer.count == inputs[layer.name].size // layer.channels
        np.testing.assert_allclose(layer.new_mean, mean, rtol=1e-4, atol=1e-5, err_msg=layer.name)
        np.testing.assert_allclose(layer.new_variance, variance, rtol=1e-4, atol=1e-6, err_msg=layer.name)


def test_first_layer_statistics_do_not_depend_on_the_batch_split(slim_model, tmp_path):
    model = slim_model("seed")
    calib = np.load(model.calib)
    results = [
        ckptfix.recalibrate(model.prefix, calib, output=tmp_path / str(size), batch_size=size, shuffle=False,
                            include="conv1").layers[0]
        for size in (7, 32, len(calib))
    ]
    for other in results[1:]:
        np.testing.assert_allclose(other.new_mean, results[0].new_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other.new_variance, results[0].new_variance, rtol=1e-5)


def test_include_exclude_leave_other_layers_untouched(slim_model, tmp_path):
    model = slim_model("seed")
    report = ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "out", exclude="conv2")
    assert [layer.name for layer in report.layers] == ["conv1/BatchNorm"]
    assert report.untouched_layers == ["conv2/BatchNorm"]
    old, new = tensors(model.prefix), tensors(report.output_checkpoint)
    for key in ("conv2/BatchNorm/moving_mean", "conv2/BatchNorm/moving_variance"):
        assert old[key].tobytes() == new[key].tobytes()
    with pytest.raises(NoBatchNormError, match="select none"):
        ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "none", include="^nothing$")


def test_batch_mean_estimator(slim_model, tmp_path):
    model = slim_model("seed")
    calib = np.load(model.calib)
    report = ckptfix.recalibrate(model.prefix, calib, output=tmp_path / "out", batch_size=64, shuffle=False,
                                 include="conv1", estimator="batch-mean")
    inputs = bn_inputs(model, model.prefix, model.calib, batch_size=64)["conv1/BatchNorm"]
    per_batch = [inputs[i : i + 64].reshape(-1, inputs.shape[-1]).astype(np.float64) for i in range(0, len(calib), 64)]
    np.testing.assert_allclose(report.layers[0].new_mean, np.mean([b.mean(0) for b in per_batch], 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(report.layers[0].new_variance, np.mean([b.var(0, ddof=1) for b in per_batch], 0), rtol=1e-4)


def test_output_restores_into_the_original_meta_graph(slim_model, tmp_path):
    model = slim_model("placeholder_cond")
    report = ckptfix.recalibrate(model.prefix, model.images_dir, output=tmp_path / "out")
    assert tf.train.latest_checkpoint(str(tmp_path / "out")) == report.output_checkpoint
    assert report.notices and "inception" in report.notices[0]
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        saver = tf.compat.v1.train.import_meta_graph(model.prefix + ".meta", clear_devices=True)
        saver.restore(session, report.output_checkpoint)
        value = session.run(graph.get_tensor_by_name("conv1/BatchNorm/moving_mean:0"))
    np.testing.assert_allclose(value, report.layers[0].new_mean, rtol=1e-6)
