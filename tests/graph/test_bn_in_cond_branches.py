"""BN under TF2 control flow (each ``tf.cond`` an ``If`` op whose branches are functions), in TF1 graphs built by
bn_flavours_tool.py. Ghost BN's ``smart_cond`` chooses only the statistics, so its normalisation stays at top level.
chiron's hand-written BN puts its whole normalisation in the branch functions: found there and measured through a
batch-statistics copy of the inference branch. BN whose input is computed inside a branch function cannot be fed:
it is named, never skipped silently (a notice when other layers are repaired, an error when none is left)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptfix
import forked
from cli.test_errors import assert_clean_error, run_cli

pytestmark = pytest.mark.subprocess  # a fixture process and CLI runs (make test-fast leaves them out)

TOOL = Path(__file__).with_name("bn_flavours_tool.py")
OUT_OF_REACH = "BN in conv0_bn normalises a tensor computed inside tf.cond branch functions (TF2 control flow)"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cond_v2")
    result = forked.run([sys.executable, str(TOOL), str(root), "ghost_cond_v2", "chiron_cond_v2", "conv_in_cond_v2"],
                        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    made = json.loads(result.stdout.strip().splitlines()[-1])
    for case, info in made.items():
        info["root"] = root / case
    return made


def _graph_ops(prefix: str) -> set[str]:
    from ckptfix.graph.meta import load_meta_graph

    return {node.op for node in load_meta_graph(Path(prefix + ".meta")).graph_def.node}


def test_ghost_bn_under_if_ops_is_found_and_gets_its_own_updates_statistics(built, tmp_path):
    """The truth is the tool's reference: the mean over ghost batches of each group's moments (what the layer's own
    update computes, asked for with ``estimator="batch-mean"``), from TensorFlow's own training-mode run; no layer is
    reported as out of reach."""
    info = built["ghost_cond_v2"]
    assert "If" in _graph_ops(info["prefix"]) and "Switch" not in _graph_ops(info["prefix"])
    notices = []
    report = ckptfix.recalibrate(info["prefix"], np.load(info["root"] / "data.npy"), batch_size=info["batch"],
                                 shuffle=False, output=tmp_path / "out", on_notice=notices.append, estimator="batch-mean")
    assert [layer.name for layer in report.layers] == ["bn0", "bn1"]
    assert not any("branch functions" in n for n in notices), notices
    reference = np.load(info["root"] / "reference.npz")
    reader = tf.train.load_checkpoint(str(tmp_path / "out" / "model.ckpt"))
    for name in ("bn0", "bn1"):
        np.testing.assert_allclose(reader.get_tensor(f"{name}/moving_mean").reshape(-1), reference[f"{name}/ghost_mean"],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(reader.get_tensor(f"{name}/moving_variance").reshape(-1),
                                   reference[f"{name}/ghost_variance"], rtol=1e-5)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_hand_written_bn_inside_branch_functions_is_repaired(built, tmp_path):
    """chiron's pattern under If ops: the layer found in the inference branch function, measured with a copy of that
    branch normalising with batch statistics (its update's branch never runs). Truth: the tool's reference (the
    graph run by TensorFlow with the flag fed True), and the repaired checkpoint's inference branch reproducing the
    training branch's logits, which the stale one does not."""
    info = built["chiron_cond_v2"]
    assert "If" in _graph_ops(info["prefix"]) and "Switch" not in _graph_ops(info["prefix"])
    data = np.load(info["root"] / "data.npy")
    notices = []
    report = ckptfix.recalibrate(info["prefix"], data, batch_size=info["batch"], shuffle=False, output=tmp_path / "out",
                                 on_notice=notices.append, output_tensor=info["output"])
    assert [(layer.name, layer.kind) for layer in report.layers] == [("conv0_bn", "non-fused"), ("bn1", "fused")]
    assert report.training_flag == "training:0"
    assert not any("branch functions" in n for n in notices), notices
    reference = np.load(info["root"] / "reference.npz")
    repaired = str(tmp_path / "out" / "model.ckpt")
    reader = tf.train.load_checkpoint(repaired)
    np.testing.assert_allclose(reader.get_tensor("conv0_bn/pop_mean"), reference["conv0_bn/mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reader.get_tensor("conv0_bn/pop_var"), reference["conv0_bn/variance"], rtol=1e-5)
    n = len(data) * 36  # values per channel: fused BN keeps the Bessel-corrected variance
    np.testing.assert_allclose(reader.get_tensor("bn1/moving_mean"), reference["bn1/mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reader.get_tensor("bn1/moving_variance"), reference["bn1/variance"] * n / (n - 1), rtol=1e-5)

    def logits(prefix: str, training: bool) -> np.ndarray:
        graph = tf.Graph()
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
            tf.compat.v1.train.import_meta_graph(info["prefix"] + ".meta").restore(session, prefix)
            return np.concatenate([session.run(info["output"], {"images:0": data[k:k + info["batch"]], "training:0": training})
                                   for k in range(0, len(data), info["batch"])])

    truth = logits(info["prefix"], True)
    error = {name: float(np.abs(logits(prefix, False) - truth).mean() / np.abs(truth).mean())
             for name, prefix in (("stale", info["prefix"]), ("repaired", repaired))}
    # measured: 0.0103 and 0.89 (truth normalises each batch of 16 by its own moments)
    assert error["repaired"] < 0.05 and error["stale"] > 0.5, error


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_bn_of_a_tensor_computed_inside_branch_functions_is_refused_by_name(built, tmp_path):
    info = built["conv_in_cond_v2"]
    train = Path(info["prefix"]).parent
    before = _digest(train)
    out = tmp_path / "out"
    result = run_cli("recalibrate", info["prefix"], info["root"] / "data.npy", "-o", out, "--no-progress")
    assert_clean_error(result, 1, OUT_OF_REACH, "disable_control_flow_v2")
    assert not out.exists() and _digest(train) == before


def test_frozen_too(built):
    """Frozen, the statistics are constants passed into the If: named the same way, not taken for folded BN."""
    from ckptfix.errors import GraphError

    with pytest.raises(GraphError, match=re.escape(OUT_OF_REACH) + r".*cannot recalibrate frozen.pb"):
        ckptfix.inspect(built["conv_in_cond_v2"]["root"] / "frozen.pb")
