"""inspect / diagnose / recalibrate's proof: verdicts and exit codes on real stale slim checkpoints, the JSON
schema, and output-agreement figures checked against an independent numpy computation."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from diagnostics.schema import validate_report
import forked

v1 = tf.compat.v1


def run_cli(*args) -> subprocess.CompletedProcess:
    return forked.run([sys.executable, "-m", "ckptfix", *map(str, args)], timeout=300)


def test_stale_then_fresh_through_the_cli(slim_model, tmp_path):
    model = slim_model("seed")
    stale = run_cli("diagnose", model.prefix, model.calib, "--no-progress", "--json")
    assert stale.returncode == 3, stale.stderr
    report = json.loads(stale.stdout)
    validate_report(report)
    assert report["verdict"] == "stale" and report["stale_layers"] == model.info["bn_layers"]
    assert report["agreement"]["top1_before"] < 0.5 < 0.95 <= report["agreement"]["top1_after"]

    fixed = run_cli("recalibrate", model.prefix, model.calib, "-o", tmp_path / "fixed", "--no-progress")
    assert fixed.returncode == 0, fixed.stderr
    assert "inference mode agrees with training mode on" in fixed.stdout

    fresh = run_cli("diagnose", tmp_path / "fixed", model.calib, "--no-progress")
    assert fresh.returncode == 0, fresh.stderr
    assert "fresh: all 2 BN layers" in fresh.stdout and "stale" not in fresh.stdout.split("\n")[2]
    assert list(tmp_path.iterdir()) == [tmp_path / "fixed"]  # diagnose wrote nothing


def test_statistics_from_another_domain_are_caught(slim_model):
    model = slim_model("nonfused_pretrained")
    report = ckptfix.diagnose(model.prefix, np.load(model.calib))
    assert report.stale and report.layers[0].drift.mean_shift > 1
    assert not np.allclose(report.layers[0].old_mean, 0)  # not the 0/1 signature: inspect cannot see it
    assert ckptfix.inspect(model.prefix).flagged == []
    validate_report(report.to_dict())


def test_inspect_flags_initial_statistics_and_against(slim_model, tmp_path):
    model = slim_model("seed")
    result = run_cli("inspect", model.prefix, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    validate_report(report)
    assert report["flagged"] == model.info["bn_layers"]
    assert all(layer["flags"] == ["initial"] for layer in report["layers"])

    fixed = ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "fixed")
    validate_report(fixed.to_dict())
    against_original = ckptfix.inspect(fixed.output_checkpoint, against=model.prefix)
    assert against_original.flagged == []
    against_itself = ckptfix.inspect(fixed.output_checkpoint, against=fixed.output_checkpoint)
    assert all(layer.flags == ["same-as-against"] for layer in against_itself.layers)
    table = run_cli("inspect", fixed.output_checkpoint)
    assert table.returncode == 0 and "none flagged" in table.stdout


def test_agreement_matches_an_independent_numpy_computation(tmp_path):
    """BN on the input, then a fixed linear head: every output can be computed in numpy."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 4)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="features")
        flag = v1.placeholder_with_default(False, [], name="is_training")
        with v1.variable_scope("bn"):
            mean_var = v1.get_variable("moving_mean", initializer=tf.zeros([3]), trainable=False)
            var_var = v1.get_variable("moving_variance", initializer=tf.ones([3]), trainable=False)
            image = tf.reshape(x, [-1, 1, 1, 3])
            y = v1.cond(flag, lambda: v1.nn.fused_batch_norm(image, tf.ones([3]), tf.zeros([3]), epsilon=1e-3)[0],
                        lambda: v1.nn.fused_batch_norm(image, tf.ones([3]), tf.zeros([3]), mean_var, var_var,
                                                       epsilon=1e-3, is_training=False)[0])
        tf.matmul(tf.reshape(y, [-1, 3]), tf.constant(weights), name="logits")
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = saver.save(session, str(tmp_path / "train" / "model.ckpt"))

    data = (rng.normal(size=(64, 3)) * [1, 2, 3] + [4, -1, 0]).astype(np.float32)
    report = ckptfix.diagnose(prefix, data, batch_size=16, shuffle=False, agreement_samples=64, seed=5)
    assert report.agreement.output_tensor == "logits:0" and report.agreement.num_samples == 64

    def head(values, mean, variance):
        return ((values - mean) / np.sqrt(variance + 1e-3)) @ weights

    # every batch kept; the samples shuffled with the seed and cut into two reference batches of 32 (docs/diagnostics.md)
    order = np.random.default_rng(5).permutation(64)
    mixed = np.concatenate([data[rows] for rows in np.array_split(order, 2)])
    batch_mode = np.concatenate([head(b, b.mean(0), b.var(0)) for b in (mixed[:32], mixed[32:])])
    new_mean, new_variance = data.astype(np.float64).mean(0), data.astype(np.float64).var(0, ddof=1)
    before, after = head(mixed, 0.0, 1.0), head(mixed, new_mean, new_variance)
    top1 = lambda out: np.mean(out.argmax(1) == batch_mode.argmax(1))  # noqa: E731
    error = lambda out: np.linalg.norm(out - batch_mode) / np.linalg.norm(batch_mode)  # noqa: E731
    assert report.agreement.top1_before == pytest.approx(top1(before))
    assert report.agreement.top1_after == pytest.approx(top1(after))
    assert report.agreement.relative_error_before == pytest.approx(error(before), rel=1e-4)
    assert report.agreement.relative_error_after == pytest.approx(error(after), rel=1e-4)
