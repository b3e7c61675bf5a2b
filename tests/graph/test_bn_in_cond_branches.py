"""BN under TF2 control flow (each ``tf.cond`` an ``If`` op whose branches are functions), in TF1 graphs built by
bn_flavours_tool.py. Ghost BN's ``smart_cond`` chooses only the statistics, so its normalisation stays at top level:
found and repaired as under TF1 control flow. chiron's hand-written BN puts its whole normalisation in the branch
functions, where ckptfix does not measure non-fused BN: it is named, never skipped silently (a notice when other
layers are repaired, an error when none is left)."""

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
IN_BRANCHES = "BN in conv0_bn normalises inside tf.cond branch functions (TF2 control flow)"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cond_v2")
    result = forked.run([sys.executable, str(TOOL), str(root), "ghost_cond_v2", "chiron_cond_v2", "chiron_cond_v2_only"],
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
    """The truth is the tool's reference: the mean over ghost batches of each group's moments, from TensorFlow's own
    training-mode run; no layer is reported as out of reach."""
    info = built["ghost_cond_v2"]
    assert "If" in _graph_ops(info["prefix"]) and "Switch" not in _graph_ops(info["prefix"])
    notices = []
    report = ckptfix.recalibrate(info["prefix"], np.load(info["root"] / "data.npy"), batch_size=info["batch"],
                                 shuffle=False, output=tmp_path / "out", on_notice=notices.append,
                                 force=True)  # 64 samples: the gate is not what is tested here
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


def test_bn_inside_branch_functions_is_named_and_the_other_layers_repaired(built, tmp_path):
    info = built["chiron_cond_v2"]
    out = tmp_path / "out"
    result = run_cli("recalibrate", info["prefix"], info["root"] / "data.npy", "--batch-size", info["batch"], "-o", out,
                     "--force", "--json", "--no-progress", "--output-tensor", info["output"])
    assert result.returncode == 0, result.stderr
    assert IN_BRANCHES in result.stderr and "kept as stored and unchecked" in result.stderr
    assert [layer["name"] for layer in json.loads(result.stdout)["layers"]] == ["bn1"]
    before, after = (tf.train.load_checkpoint(p) for p in (info["prefix"], str(out / "model.ckpt")))
    for name in ("pop_mean", "pop_var"):
        assert after.get_tensor(f"conv0_bn/{name}").tobytes() == before.get_tensor(f"conv0_bn/{name}").tobytes()
    assert not np.array_equal(after.get_tensor("bn1/moving_mean"), before.get_tensor("bn1/moving_mean"))
    # diagnose says it too: the verdict covers bn1 only
    diagnosis = ckptfix.diagnose(info["prefix"], np.load(info["root"] / "data.npy"), batch_size=info["batch"])
    assert any(IN_BRANCHES in n for n in diagnosis.notices), diagnosis.notices


def test_a_graph_whose_only_bn_is_inside_branch_functions_is_refused(built, tmp_path):
    info = built["chiron_cond_v2_only"]
    train = Path(info["prefix"]).parent
    before = _digest(train)
    out = tmp_path / "out"
    result = run_cli("recalibrate", info["prefix"], info["root"] / "data.npy", "-o", out, "--no-progress")
    assert_clean_error(result, 1, IN_BRANCHES, "disable_control_flow_v2")
    assert not out.exists() and _digest(train) == before


def test_a_frozen_graph_whose_only_bn_is_inside_branch_functions_is_refused(built):
    """Frozen, the statistics are constants passed into the If: named the same way, not taken for folded BN."""
    from ckptfix.errors import GraphError

    with pytest.raises(GraphError, match=re.escape(IN_BRANCHES) + r".*cannot recalibrate frozen.pb"):
        ckptfix.inspect(built["chiron_cond_v2_only"]["root"] / "frozen.pb")
