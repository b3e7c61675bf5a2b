"""A graph whose input has a fixed batch dimension records the batch size training used: without
--batch-size, that is the calibration batch size (said in a notice); --batch-size still overrides it."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
from cli.test_errors import run_cli

pytestmark = pytest.mark.subprocess  # CLI runs and fresh interpreters (make test-fast leaves them out)

TRAINING_BATCH = 16


@pytest.fixture(scope="module")
def fixed_batch_checkpoint(tmp_path_factory) -> Path:
    """A stale TF1 checkpoint (conv -> fused BN -> dense) whose input placeholder is [16, 8, 8, 3]."""
    folder = tmp_path_factory.mktemp("fixed") / "train"
    import slim_compat  # noqa: F401  (patches TF before tf_slim is imported)
    import tf_slim as slim

    graph = tf.Graph()
    v1 = tf.compat.v1
    with graph.as_default():
        v1.set_random_seed(0)
        images = v1.placeholder(tf.float32, [TRAINING_BATCH, 8, 8, 3], name="images")
        net = slim.conv2d(images, 8, 3, scope="conv1", normalizer_fn=slim.batch_norm,
                          normalizer_params={"is_training": True})  # the train op below never runs UPDATE_OPS
        slim.fully_connected(slim.flatten(net), 4, activation_fn=None, scope="logits")
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return Path(saver.save(session, str(folder / "model.ckpt"), global_step=1))


def test_the_training_batch_size_is_the_default(fixed_batch_checkpoint, tmp_path):
    data = np.random.default_rng(0).normal(size=(8 * TRAINING_BATCH, 8, 8, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    notices = []
    report = ckptfix.diagnose(fixed_batch_checkpoint, data, on_notice=notices.append)
    assert report.num_batches == 8 and all(d.samples == 8 * TRAINING_BATCH for d in report.devices)
    assert any(f"batch size {TRAINING_BATCH}, the fixed batch dimension" in n for n in notices), notices
    result = run_cli("diagnose", fixed_batch_checkpoint, tmp_path / "x.npy", "--no-progress", "--json")
    assert f"batch size {TRAINING_BATCH}, the fixed batch dimension of the graph's input" in result.stderr, result.stderr
