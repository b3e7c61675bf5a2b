"""SavedModels repaired at graph level: statistics equal to a float64 reference of the BN inputs, the repaired
folder served by ``tf.saved_model.load`` with the new statistics, ``saved_model.pb`` and every file but
``variables/`` byte-identical, and every tensor but the statistics unchanged."""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptfix
from ckptfix.errors import CkptfixError, GraphError, NoBatchNormError
import forked


def _data(exported):
    data = exported.data
    if isinstance(data, Path) and data.suffix == ".npz":
        return dict(np.load(data))
    return np.load(data) if isinstance(data, Path) else data


def _other_files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith("variables."))


def _check_repaired(exported, output: Path, report, rtol: float = 1e-5, served_tolerance: float = 1e-4):
    """The report's statistics, the written variables and the repaired model's serving output."""
    import tensorflow as tf

    data = _data(exported)
    reference = exported.reference(data)
    assert len(report.layers) == len(reference)
    for layer, (mean, variance) in zip(report.layers, reference):
        np.testing.assert_allclose(layer.new_mean, mean, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(layer.new_variance, variance, rtol=rtol, atol=rtol)
    # saved_model.pb, fingerprint, assets: the same bytes; variables/: only the statistics changed
    assert _other_files(output) == _other_files(exported.path)
    for name in _other_files(exported.path):
        assert filecmp.cmp(exported.path / name, output / name, shallow=False), name
    before = tf.train.load_checkpoint(str(exported.path / "variables" / "variables"))
    after = tf.train.load_checkpoint(str(output / "variables" / "variables"))
    statistics = {key for layer in report.layers for key in (layer.mean_key, layer.variance_key)}
    assert set(after.get_variable_to_shape_map()) == set(before.get_variable_to_shape_map())
    for key in before.get_variable_to_shape_map():
        old, new = np.asarray(before.get_tensor(key)), np.asarray(after.get_tensor(key))
        if key in statistics:
            assert not np.array_equal(old, new), key
        else:
            assert old.tobytes() == new.tobytes(), key
    for layer in report.layers:
        np.testing.assert_array_equal(after.get_tensor(layer.variance_key), layer.new_variance.astype(np.float32))
    served = exported.serve(output, data)
    np.testing.assert_allclose(served, exported.expected(reference, data), rtol=served_tolerance, atol=served_tolerance)
    stale = exported.serve(exported.path, data)
    assert np.abs(stale - served).max() > 10 * served_tolerance  # the repair is what changed the output


def _samples(exported) -> int:
    data = _data(exported)
    return len(next(iter(data.values())) if isinstance(data, dict) else data)


def _repair(exported, tmp_path, **keywords):
    """Repair with all samples in one batch: each BN's statistics are then those of the reference."""
    output = tmp_path / "fixed"
    report = ckptfix.recalibrate(exported.path, exported.data, output=output, batch_size=_samples(exported),
                                 shuffle=False, **keywords)
    assert report.model_format == "savedmodel-graph"
    assert Path(report.output_checkpoint) == output
    return output, report


def test_keras3_export(keras3_export, tmp_path):
    output, report = _repair(keras3_export, tmp_path)
    assert [layer.name for layer in report.layers] == ["bn"] and report.layers[0].variance_convention == "biased"
    # named by the signature's output key, not the inlined graph's StatefulPartitionedCall_1:0
    assert report.agreement.output_tensor == "output_0" and "of output_0 " in report.agreement.summary()
    _check_repaired(keras3_export, output, report)


def test_keras3_export_inspect_and_diagnose(keras3_export):
    inspected = ckptfix.inspect(keras3_export.path, against=keras3_export.path)
    assert inspected.model_format == "savedmodel-graph" and [layer.name for layer in inspected.layers] == ["bn"]
    assert inspected.layers[0].flags == ["initial", "same-as-against"]
    diagnosis = ckptfix.diagnose(keras3_export.path, keras3_export.data, batch_size=16)
    assert diagnosis.stale


def test_module_with_nonfused_and_fused_bn_under_cond(module_export, tmp_path):
    output, report = _repair(module_export, tmp_path)
    assert [layer.kind for layer in report.layers] == ["non-fused", "fused"]
    assert report.training_flag == "training"
    assert not any("branch functions" in notice for notice in report.notices), report.notices
    _check_repaired(module_export, output, report)


def _cond_branches_module(path: Path, conv_inside: bool, with_fused: bool) -> tuple[Path, np.ndarray]:
    """Hand-written BN whose whole normalisation sits in both branches of ``tf.cond(training, ...)`` (batch moments
    and their update / the population variables ``pop``), of a conv computed before the cond or (``conv_inside``) in
    each branch; then optionally a fused BN (``bn``). Returns the folder and the conv's kernel."""
    import tensorflow as tf

    kernel = np.random.RandomState(10).randn(3, 3, 3, 4).astype(np.float32)
    m = tf.Module()
    m.kernel = tf.Variable(kernel)
    m.pop = tf.Module()
    m.pop.mean, m.pop.var = tf.Variable(np.zeros(4, np.float32)), tf.Variable(np.ones(4, np.float32))
    m.bn = tf.Module()
    m.bn.moving_mean, m.bn.moving_variance = tf.Variable(np.zeros(4, np.float32)), tf.Variable(np.ones(4, np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32), tf.TensorSpec([], tf.bool)])
    def serve(x, training):
        outside = tf.nn.conv2d(x, m.kernel, 1, "SAME")

        def conv():
            return tf.nn.conv2d(x, m.kernel, 1, "SAME") if conv_inside else outside

        def batch():
            h = conv()
            mean, variance = tf.nn.moments(h, [0, 1, 2])
            with tf.control_dependencies([m.pop.mean.assign(0.9 * m.pop.mean + 0.1 * mean),
                                          m.pop.var.assign(0.9 * m.pop.var + 0.1 * variance)]):
                return tf.nn.batch_normalization(h, mean, variance, None, None, 1e-3)

        h = tf.cond(training, batch, lambda: tf.nn.batch_normalization(conv(), m.pop.mean, m.pop.var, None, None, 1e-3))
        if with_fused:
            h = tf.compat.v1.nn.fused_batch_norm(h, tf.ones([4]), tf.zeros([4]), m.bn.moving_mean,
                                                 m.bn.moving_variance, is_training=False)[0]
        return {"y": tf.reduce_mean(h, [1, 2])}

    m.serve = serve
    tf.saved_model.save(m, str(path), signatures={"serving_default": serve})
    return path, kernel


def test_nonfused_bn_inside_cond_branches_is_repaired(tmp_path):
    """chiron's pattern in a tf.function: the layer in the inference branch function measured through a batch-statistics
    copy of it; statistics equal to the float64 moments of the conv (biased variance, as tf.nn.moments)."""
    folder, kernel = _cond_branches_module(tmp_path / "model", conv_inside=False, with_fused=True)
    # one batch (its statistics are then exactly what training mode normalises with) of 1,024 samples: the repair
    # gate refuses one of 32 (62 % of the repaired decisions move within the statistics' standard errors, more than
    # the repair gains) and one of 256 (30 %, against a gain of 44 %)
    data = (np.random.RandomState(11).randn(1024, 8, 8, 3) * 2 + 1).astype(np.float32)
    report = ckptfix.recalibrate(folder, data, batch_size=1024, output=tmp_path / "fixed")
    assert [layer.kind for layer in report.layers] == ["non-fused", "fused"]
    assert not any("branch functions" in n for n in report.notices), report.notices
    import tensorflow as tf

    h = tf.nn.conv2d(tf.constant(data, tf.float64), tf.constant(kernel, tf.float64), 1, "SAME").numpy().reshape(-1, 4)
    np.testing.assert_allclose(report.layers[0].new_mean, h.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(report.layers[0].new_variance, h.var(0), rtol=1e-5)
    assert report.agreement.relative_error_after < 1e-3 < report.agreement.relative_error_before


def test_bn_of_a_tensor_computed_inside_cond_branches_is_named(tmp_path):
    """The conv inside each branch too: nothing top-level to measure. Named in a notice beside a repaired fused BN;
    alone, a GraphError naming it."""
    from ckptfix.errors import GraphError

    data = (np.random.RandomState(11).randn(32, 8, 8, 3) * 2 + 1).astype(np.float32)
    folder, _ = _cond_branches_module(tmp_path / "mixed", conv_inside=True, with_fused=True)
    report = ckptfix.recalibrate(folder, data, batch_size=16, output=tmp_path / "fixed")
    assert [layer.name for layer in report.layers] == ["bn"]
    assert any("BN in pop normalises a tensor computed inside tf.cond branch functions" in n for n in report.notices)
    folder, _ = _cond_branches_module(tmp_path / "alone", conv_inside=True, with_fused=False)
    with pytest.raises(GraphError, match="BN in pop normalises a tensor computed inside .*signature serving_default"):
        ckptfix.inspect(folder)


def test_two_inputs_and_a_second_signature(two_input_export, tmp_path):
    import tensorflow as tf

    output, report = _repair(two_input_export, tmp_path)
    assert sorted(report.input_tensors) == ["a", "b"]
    _check_repaired(two_input_export, output, report)
    # the other signature reads the same variables: repaired with them
    data = two_input_export.extra["data"]
    maps = tf.saved_model.load(str(output)).signatures["features"](a=tf.constant(data["a"]), b=tf.constant(data["b"]))
    expected = two_input_export.extra["features"](two_input_export.reference(data), data)
    np.testing.assert_allclose(maps["maps"].numpy(), expected, rtol=1e-4, atol=1e-4)
    # a dict of arrays and --signature work the same
    again = ckptfix.recalibrate(two_input_export.path, data, output=tmp_path / "again", batch_size=len(data["a"]),
                                signature="features")
    np.testing.assert_allclose(again.layers[0].new_mean, report.layers[0].new_mean, rtol=1e-5)
    with pytest.raises(GraphError, match="no signature nope .*features, serving_default"):
        ckptfix.inspect(two_input_export.path, signature="nope")


def test_tf_keras_savedmodel(tf_keras_savedmodel, tmp_path):
    """With keras_metadata.pb it takes the Keras path unless --signature is given; without it (as TF <= 2.4
    wrote them), the graph path."""
    assert ckptfix.inspect(tf_keras_savedmodel.path).model_format == "savedmodel"
    output, report = _repair(tf_keras_savedmodel, tmp_path, signature="serving_default")
    assert [layer.kind for layer in report.layers] == ["fused"] and report.layers[0].variance_convention == "bessel"
    _check_repaired(tf_keras_savedmodel, output, report)

    old_style = tmp_path / "old_style"
    shutil.copytree(tf_keras_savedmodel.path, old_style)
    (old_style / "keras_metadata.pb").unlink()
    report = ckptfix.recalibrate(old_style, tf_keras_savedmodel.data, batch_size=_samples(tf_keras_savedmodel))
    assert report.model_format == "savedmodel-graph"
    assert Path(report.output_checkpoint) == tmp_path / "old_style-recalibrated"


def test_mixed_precision(keras3_mixed_export, tmp_path):
    """float16 compute, float32 statistics: the moments are pooled in float64 from the float16 BN input."""
    output, report = _repair(keras3_mixed_export, tmp_path)
    assert report.layers[0].new_mean.dtype == np.float64
    _check_repaired(keras3_mixed_export, output, report, rtol=2e-3, served_tolerance=2e-2)


@pytest.mark.subprocess
def test_cli_writes_beside_the_input(keras3_export, tmp_path):
    folder = tmp_path / "cli"
    shutil.copytree(keras3_export.path, folder / "exported_model")
    shutil.copy(keras3_export.data, folder / "calibration.npy")
    done = forked.run([sys.executable, "-m", "ckptfix", "recalibrate", "exported_model/", "calibration.npy",
                           "--no-progress"], cwd=folder, timeout=300,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    fixed = folder / "exported_model-recalibrated"
    assert (fixed / "saved_model.pb").read_bytes() == (keras3_export.path / "saved_model.pb").read_bytes()
    import tensorflow as tf

    signatures = tf.saved_model.load(str(fixed)).signatures
    assert sorted(signatures) == sorted(tf.saved_model.load(str(keras3_export.path)).signatures) == ["serve", "serving_default"]


def test_bn_in_a_function_called_from_a_cond_branch(tmp_path):
    """A tf.function called inside the inference branch: inlined into the branch, its BN found and measured;
    an unnamed variable's layer is named by its object path."""
    import tensorflow as tf

    rng = np.random.RandomState(9)
    kernel = rng.randn(3, 3, 3, 4).astype(np.float32)
    m = tf.Module()
    m.kernel = tf.Variable(kernel)
    m.stats = tf.Module()
    m.stats.moving_mean, m.stats.moving_variance = tf.Variable(np.zeros(4, np.float32)), tf.Variable(np.ones(4, np.float32))

    @tf.function
    def infer(h):
        return tf.compat.v1.nn.fused_batch_norm(h, tf.ones([4]), tf.zeros([4]), m.stats.moving_mean,
                                                m.stats.moving_variance, is_training=False)[0]

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32), tf.TensorSpec([], tf.bool)])
    def serve(x, training):
        h = tf.nn.conv2d(x, m.kernel, 1, "SAME")
        train = lambda: tf.compat.v1.nn.fused_batch_norm(h, tf.ones([4]), tf.zeros([4]), is_training=True)[0]  # noqa: E731
        return {"y": tf.reduce_mean(tf.cond(training, train, lambda: infer(h)), [1, 2])}

    m.serve = serve
    tf.saved_model.save(m, str(tmp_path / "nested"), signatures={"serving_default": serve})
    data = (rng.randn(16, 8, 8, 3) * 2 + 1).astype(np.float32)
    report = ckptfix.recalibrate(tmp_path / "nested", data, batch_size=16, output=tmp_path / "fixed")
    assert [layer.name for layer in report.layers] == ["stats"]
    h = tf.nn.conv2d(tf.constant(data, tf.float64), tf.constant(kernel, tf.float64), 1, "SAME").numpy().reshape(-1, 4)
    np.testing.assert_allclose(report.layers[0].new_mean, h.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(report.layers[0].new_variance, h.var(0, ddof=1), rtol=1e-5)
    assert report.agreement.relative_error_after < 1e-3
    assert (tmp_path / "fixed" / "saved_model.pb").read_bytes() == (tmp_path / "nested" / "saved_model.pb").read_bytes()


def test_statistics_folded_into_constants(tmp_path):
    """A BN reading constants is named in a notice and left alone; with nothing else, exit code 4."""
    import tensorflow as tf

    def export(name: str, with_variables: bool) -> Path:
        m = tf.Module()
        m.kernel = tf.Variable(np.ones((3, 3, 3, 4), np.float32))
        m.mean, m.var = tf.Variable(np.zeros(4, np.float32)), tf.Variable(np.ones(4, np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(x):
            h = tf.nn.conv2d(x, m.kernel, 1, "SAME")
            y = tf.compat.v1.nn.fused_batch_norm(h, tf.ones([4]), tf.zeros([4]), tf.zeros([4]), tf.ones([4]),
                                                 is_training=False)[0]
            if with_variables:
                y = tf.compat.v1.nn.fused_batch_norm(y, tf.ones([4]), tf.zeros([4]), m.mean, m.var, is_training=False)[0]
            return {"y": y}

        m.serve = serve
        tf.saved_model.save(m, str(tmp_path / name), signatures={"serving_default": serve})
        return tmp_path / name

    report = ckptfix.inspect(export("mixed", True))
    assert len(report.layers) == 1
    assert any("folded into constants" in notice for notice in report.notices), report.notices
    with pytest.raises(NoBatchNormError, match="constants") as raised:
        ckptfix.inspect(export("folded", False))
    assert raised.value.exit_code == 4


def test_signature_needs_a_savedmodel(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(CkptfixError, match="the arguments look swapped"):  # data given as CKPT
        ckptfix.inspect(tmp_path / "x.npy", signature="serving_default")


def test_tf1_savedmodel(tf1_savedmodel, tmp_path):
    """Signatures on plain graph tensors: the graph and saver as they are, keys from the variable collections."""
    output, report = _repair(tf1_savedmodel, tmp_path)
    assert [(layer.name, layer.mean_key) for layer in report.layers] == [("bn", "bn/moving_mean")]
    assert report.input_tensors == ["image"]
    _check_repaired(tf1_savedmodel, output, report)


@pytest.mark.subprocess
def test_two_logical_cpus_match_one_device(module_export, tmp_path):
    """Issue 16 through the SavedModel source: whole batches on two devices, the one-device statistics."""
    from scaling.helpers import assert_same_statistics, run_api

    options = dict(batch_size=32, shuffle=True, seed=2)  # 16 batches
    one = ckptfix.diagnose(module_export.path, _data(module_export), **options).to_dict()
    data = module_export.data if isinstance(module_export.data, Path) else tmp_path / "data.npy"
    if not isinstance(module_export.data, Path):
        np.save(data, module_export.data)
    two = run_api(module_export.path, data, tmp_path / "two.json", logical_cpus=2, command="diagnose", **options)
    assert_same_statistics(one, two)
    assert [row["device"] for row in two["devices"]] == ["/CPU:0", "/CPU:1"]
    assert all(row["batches"] > 0 for row in two["devices"])
