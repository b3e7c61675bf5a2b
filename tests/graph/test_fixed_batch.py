"""Graphs whose input was saved with a fixed batch dimension (issue 32 item 2, issue 36 item 1).

A placeholder ``[32, 8, 8, 3]`` (or ``[1, ...]``, as frozen mobile graphs ship) declares a size the graph does not
need: ckptfix frees it, so data that is not a multiple of 32 (its last batch of 36) and another ``--batch-size`` run.
A graph whose own operations fix the size (``tf.reshape(x, [32, -1])``) takes batches of exactly that size: any
other is refused before any work, in one line naming the fix. Truth: the BN input's statistics computed here by
TensorFlow over all the samples (float64, biased: the layers are hand-written non-fused BN).
"""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from cli.test_errors import assert_clean_error, run_cli
from ckptfix.errors import DataError

pytestmark = pytest.mark.subprocess  # CLI runs (make test-fast leaves them out)

v1 = tf.compat.v1
CHANNELS = 4


def _hand_written_bn(x, scope: str):
    """Inference-mode BN reading moving variables (the training graph's update ops never ran: 0 / 1 stay)."""
    with v1.variable_scope(scope):
        mean = v1.get_variable("moving_mean", [CHANNELS], initializer=v1.zeros_initializer(), trainable=False)
        variance = v1.get_variable("moving_variance", [CHANNELS], initializer=v1.ones_initializer(), trainable=False)
        return tf.nn.batch_normalization(x, mean, variance, None, None, 1e-3)


def save_fixed_batch_graph(prefix: Path, batch: int, refix: bool) -> Path:
    """conv -> BN -> (reshape to [batch, -1] when ``refix``, else [-1, k]) -> dense, input ``images [batch, 8, 8, 3]``;
    saved with a Saver (checkpoint + .meta). Returns the checkpoint prefix."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        images = v1.placeholder(tf.float32, [batch, 8, 8, 3], name="images")
        kernel = v1.get_variable("conv/kernel", [3, 3, 3, CHANNELS])
        net = _hand_written_bn(tf.nn.conv2d(images, kernel, 1, "SAME", name="conv/Conv2D") + 0.5, "conv/bn")
        flat = tf.reshape(net, [batch, -1] if refix else [-1, 8 * 8 * CHANNELS], name="flat")
        tf.matmul(flat, v1.get_variable("logits/kernel", [8 * 8 * CHANNELS, 3]), name="logits")
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return Path(saver.save(session, str(prefix)))


def freeze(prefix: Path, target: Path) -> Path:
    """The checkpoint's graph frozen (variables -> constants) into ``target``, as freeze_graph makes it."""
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        v1.train.import_meta_graph(str(prefix) + ".meta").restore(session, str(prefix))
        frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["logits"])
    target.write_bytes(frozen.SerializeToString())
    return target


def bn_input_statistics(prefix: Path, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance of the BN input (conv output + 0.5) over all of ``data``, in float64."""
    reader = tf.train.load_checkpoint(str(prefix))
    conv = tf.nn.conv2d(data.astype(np.float64), reader.get_tensor("conv/kernel").astype(np.float64), 1, "SAME") + 0.5
    values = conv.numpy().reshape(-1, CHANNELS)
    return values.mean(axis=0), values.var(axis=0)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fixed-batch")
    made = {}
    for name, batch, refix in (("free32", 32, False), ("free1", 1, False), ("fixed32", 32, True), ("fixed1", 1, True)):
        (root / name).mkdir()
        made[name] = save_fixed_batch_graph(root / name / "model.ckpt", batch, refix)
    made["frozen1"] = freeze(made["free1"], root / "frozen1.pb")
    return made


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 2.0, size=(n, 8, 8, 3)).astype(np.float32)


def _statistics(report):
    (layer,) = report.layers
    return layer.new_mean, layer.new_variance


@pytest.mark.parametrize("graph, samples, batch_size", [
    ("free32", 100, None),  # issue 36 item 1: batches 32, 32, 36 through a [32, ...] placeholder
    ("free32", 40, 16),     # another --batch-size than the declared one
    ("free1", 48, None),    # declared 1: fed the default 32 (and a last batch of 16)
])
def test_a_declared_batch_dimension_is_freed(graphs, graph, samples, batch_size):
    data = images(samples)
    report = ckptfix.diagnose(graphs[graph], data, batch_size=batch_size, shuffle=False)
    assert report.num_samples == samples
    mean, variance = bn_input_statistics(graphs[graph], data)
    new_mean, new_variance = _statistics(report)
    np.testing.assert_allclose(new_mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_variance, variance, rtol=1e-5)


def test_a_frozen_graph_fixed_at_batch_one_is_repaired_as_shipped(graphs, tmp_path):
    """The published frozen-MobileNet case: input ``[1, 8, 8, 3]``, non-fused BN constants; CLI, no --batch-size."""
    data = images(64, seed=1)
    np.save(tmp_path / "x.npy", data)
    result = run_cli("recalibrate", graphs["frozen1"], tmp_path / "x.npy", "-o", tmp_path / "out.pb", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((tmp_path / "out.pb").read_bytes())
    constants = {node.name: tf.make_ndarray(node.attr["value"].tensor) for node in graph_def.node if node.op == "Const"}
    mean, variance = bn_input_statistics(graphs["free1"], data)
    np.testing.assert_allclose(constants["conv/bn/moving_mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(constants["conv/bn/moving_variance"], variance, rtol=1e-5)
    shape = next(node for node in graph_def.node if node.name == "images").attr["shape"].shape
    assert [d.size for d in shape.dim] == [1, 8, 8, 3]  # the file keeps its declared input


def test_a_batch_size_the_graph_needs_is_kept(graphs):
    """``tf.reshape(x, [32, -1])`` fixes 32: 96 samples run in batches of 32 with the right statistics."""
    data = images(96)
    notices = []
    report = ckptfix.diagnose(graphs["fixed32"], data, shuffle=False, on_notice=notices.append)
    assert report.num_batches == 3
    assert any("takes exactly 32 samples" in n and "flat" in n for n in notices), notices
    mean, variance = bn_input_statistics(graphs["fixed32"], data)
    np.testing.assert_allclose(_statistics(report)[0], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_statistics(report)[1], variance, rtol=1e-5)


@pytest.mark.parametrize("graph, samples, options, phrases", [
    ("fixed32", 100, {}, ("exactly 32 samples", "Reshape flat", "num_samples=96")),
    ("fixed32", 20, {}, ("exactly 32 samples", "at least 32 samples")),
    ("fixed32", 96, {"batch_size": 16}, ("exactly 32 samples", "batch_size=32")),
    ("fixed1", 64, {}, ("at 1", "free batch dimension")),
])
def test_a_batch_size_the_graph_cannot_take_is_refused_before_any_work(graphs, graph, samples, options, phrases):
    with pytest.raises(DataError) as raised:
        ckptfix.diagnose(graphs[graph], images(samples), **options)
    assert all(phrase in str(raised.value) for phrase in phrases), str(raised.value)


def test_refusals_are_one_line_through_the_cli(graphs, tmp_path):
    np.save(tmp_path / "x.npy", images(100))
    folder = graphs["fixed32"].parent
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = run_cli("recalibrate", graphs["fixed32"], tmp_path / "x.npy", "-o", tmp_path / "out", "--no-progress")
    assert_clean_error(result, 1, "exactly 32 samples", "--num-samples 96")
    result = run_cli("recalibrate", graphs["fixed32"], tmp_path / "x.npy", "-o", tmp_path / "out", "--batch-size", "16",
                     "--no-progress")
    assert_clean_error(result, 1, "--batch-size 32")
    assert not (tmp_path / "out").exists()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
