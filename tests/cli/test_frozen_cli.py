"""Frozen graphs and `--model` through real `ckptfix` subprocesses."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli.test_errors import assert_clean_error
from fixtures.runner import evaluate
import forked
from frozen.frozen_models import changed_nodes, freeze, frozen_accuracy



def run_cli(*args, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return forked.run([sys.executable, "-m", "ckptfix", *map(str, args)], timeout=300, env=env)


@pytest.fixture(scope="module")
def graphs(slim_model, tmp_path_factory):
    model = slim_model("seed")
    folder = tmp_path_factory.mktemp("cli-frozen")
    freeze([(model, folder / "model.pb", False), (model, folder / "folded.pb", True)], folder)
    return model, folder / "model.pb", folder / "folded.pb"


def test_diagnose_and_recalibrate_a_frozen_graph(graphs, tmp_path):
    model, graph, _ = graphs
    diagnosed = run_cli("diagnose", graph, model.calib, "--no-progress")
    assert diagnosed.returncode == 3 and "STALE" in diagnosed.stdout, diagnosed.stderr

    result = run_cli("recalibrate", graph, model.images_dir, "-o", tmp_path / "fixed.pb")
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'fixed.pb'}" in result.stdout and "conv2/BatchNorm" in result.stdout
    assert "Traceback" not in result.stderr and "I0000" not in result.stderr
    assert set(changed_nodes(graph, tmp_path / "fixed.pb")) == {
        f"conv{k}/BatchNorm/moving_{s}" for k in (1, 2) for s in ("mean", "variance")}
    assert frozen_accuracy(tmp_path / "fixed.pb", model) >= model.info["accuracy"]["training"] - 0.02
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.pb"]  # no temporary file left


def test_frozen_graph_errors_exit_codes(graphs, tmp_path):
    model, graph, folded = graphs
    result = run_cli("recalibrate", folded, model.calib, "-o", tmp_path / "out.pb")
    assert_clean_error(result, 4, "folded", "(conv1/BatchNorm, conv2/BatchNorm)")
    same = run_cli("recalibrate", graph, model.calib, "-o", graph, "--overwrite")
    assert_clean_error(same, 1, "is the input graph")
    assert not list(tmp_path.iterdir())


USER_MODULE = '''
    """The user's own model code: the function their training script built the graph with (tf-slim as it is:
    ckptfix bridges what TensorFlow 2.21 removed)."""
    import tf_slim as slim
    from tf_slim.nets import inception_v3


    def small_net(images, num_classes=1000, is_training=True, width=8):
        with slim.arg_scope(inception_v3.inception_v3_arg_scope()), \\
                slim.arg_scope([slim.batch_norm], is_training=is_training):
            net = slim.conv2d(images, width, [3, 3], scope="conv1")
            net = slim.max_pool2d(net, [2, 2], scope="pool1")
            net = slim.conv2d(net, 2 * width, [3, 3], scope="conv2")
            net = slim.max_pool2d(net, [2, 2], scope="pool2")
            net = slim.flatten(net, scope="flatten")
            return slim.fully_connected(net, num_classes, activation_fn=None, normalizer_fn=None, scope="logits")
'''


def test_model_option_repairs_a_checkpoint_without_meta(slim_model, tmp_path):
    model = slim_model("seed")
    train = tmp_path / "train"
    train.mkdir()
    for file in Path(model.prefix).parent.glob(Path(model.prefix).name + ".*"):
        if file.suffix != ".meta":
            shutil.copy(file, train / file.name)
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_nets.py").write_text(textwrap.dedent(USER_MODULE))
    prefix = train / Path(model.prefix).name

    result = run_cli("recalibrate", prefix, model.calib, "-o", tmp_path / "out", "--model", "my_nets:small_net",
                     "--num-classes", "4", "--model-arg", "width=8", "--input-shape", "12x12x3", pythonpath=code)
    assert result.returncode == 0, result.stderr
    assert "conv1/BatchNorm" in result.stdout and "100% after recalibration" in result.stdout
    written = Path(result.stdout.strip().splitlines()[-1].removeprefix("wrote "))
    assert evaluate(model, written, "inference") >= model.info["accuracy"]["training"] - 0.02

    wrong = run_cli("inspect", prefix, "--model", "my_nets:small_net", "--num-classes", "4", "--model-arg", "width=16",
                    "--input-shape", "12x12x3", pythonpath=code)
    assert_clean_error(wrong, 1, "conv1/weights [3, 3, 3, 16] vs [3, 3, 3, 8]", "--num-classes / --model-arg")
    stray = run_cli("inspect", prefix, "--num-classes", "4")
    assert_clean_error(stray, 2, "apply only with --model")  # a bad option value: exit 2
