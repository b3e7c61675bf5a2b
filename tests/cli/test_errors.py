"""The CLI's answers to bad input, through real subprocesses: exit code, one or two lines, no traceback,
no TensorFlow log noise, nothing written."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import forked

pytestmark = pytest.mark.subprocess  # each test starts processes


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return forked.run(
        [sys.executable, "-m", "ckptfix", *map(str, args)], cwd=cwd, timeout=300
    )


def assert_clean_error(result: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr and "tensorflow" not in result.stderr.lower().replace("tf.compat", "")
    for phrase in phrases:
        assert phrase in result.stderr


@pytest.fixture(scope="module")
def no_bn_checkpoint(tmp_path_factory) -> Path:
    """A real Saver checkpoint of a graph without BN layers."""
    folder = tmp_path_factory.mktemp("nobn") / "train"
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 4], name="images")
        weights = tf.compat.v1.get_variable("dense/kernel", shape=[4, 2])
        tf.matmul(images, weights, name="logits")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return Path(saver.save(session, str(folder / "model.ckpt"), global_step=1))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "calib.npy"
    np.save(path, np.zeros((4, 4), np.float32))
    return path


def test_missing_checkpoint(tmp_path, data_file):
    assert_clean_error(run_cli("recalibrate", tmp_path / "nope" / "model.ckpt-1", data_file), 1, "no checkpoint at")


def test_folder_without_state_file(tmp_path, data_file):
    assert_clean_error(run_cli("recalibrate", tmp_path, data_file), 1, "no 'checkpoint' state file")


def test_no_meta_names_the_option(no_bn_checkpoint, tmp_path, data_file):
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for f in no_bn_checkpoint.parent.glob(no_bn_checkpoint.name + ".*"):
        if f.suffix != ".meta":
            (copy / f.name).write_bytes(f.read_bytes())
    assert_clean_error(run_cli("recalibrate", copy / no_bn_checkpoint.name, data_file), 1, "--meta PATH")


def test_graph_without_batchnorm_has_its_own_exit_code(no_bn_checkpoint, data_file):
    result = run_cli("recalibrate", no_bn_checkpoint, data_file)
    assert_clean_error(result, 4, "no BatchNorm layers")
    assert not (no_bn_checkpoint.parent.parent / "train-recalibrated").exists()


def test_usage_error_exits_2(data_file):
    assert run_cli("recalibrate", "--batch-size", "x", "a", data_file).returncode == 2


# Every bad option value is a usage error, exit 2, one line (a bad --estimator: tests/cli/test_options.py).
@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--num-samples", "0"]])
def test_bad_option_values(no_bn_checkpoint, data_file, option):
    assert_clean_error(run_cli("recalibrate", no_bn_checkpoint, data_file, *option), 2, option[0])
