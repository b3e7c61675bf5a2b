"""find_cause on real tf-slim training graphs: the cause is named exactly where the train op misses the BN
update ops (TF1 ref variables with a Python flag; resource variables with a tf.cond flag), never where it runs
them, and is unknown without a train op."""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ckptfix.diagnostics.cause import find_cause
from ckptfix.graph.meta import load_meta_graph
import forked

pytestmark = pytest.mark.subprocess  # the training graphs are built in subprocesses (module fixture)

SCRIPT = Path(__file__).parents[1] / "fixtures" / "train_ops.py"
ALL = ("forgotten", "create_train_op", "control_deps", "grouped", "custom_forgotten", "custom_run", "in_place",
       "no_train_op")
# mode -> (graph mode, training flag, cases built)
MODES = {"v1": ("v1", "python", ALL), "tf2-cond": ("tf2", "tensor", tuple(c for c in ALL if c != "grouped"))}
FIX = "tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict:
    """(mode, case) -> the .meta of that training graph, after two real training steps."""
    def build(mode):
        graph_mode, flag, cases = MODES[mode]
        result = forked.run(
            [sys.executable, str(SCRIPT), tmp_path_factory.mktemp(mode), "--graph-mode", graph_mode, "--flag", flag,
             *cases], timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return {(mode, case): Path(prefix + ".meta") for case, prefix in json.loads(result.stdout.splitlines()[-1]).items()}

    with ThreadPoolExecutor(len(MODES)) as pool:
        return {key: path for built in pool.map(build, MODES) for key, path in built.items()}


def cause_of(graphs, mode, case, drop_train_op_collection=False):
    meta = load_meta_graph(graphs[mode, case])
    if drop_train_op_collection:
        del meta.collection_def["train_op"]
    return find_cause(meta)


@pytest.mark.parametrize("mode", MODES)
def test_forgotten_update_ops_are_named_with_the_fix(graphs, mode):
    cause = cause_of(graphs, mode, "forgotten")
    assert cause.code == "update-ops-not-run" and cause.found
    assert cause.train_op == "GradientDescent"
    assert cause.update_ops and all("AssignMovingAvg" in name or "cond" in name for name in cause.update_ops)
    assert {"conv1", "conv2"} == {name.split("/")[0] for name in cause.update_ops}
    assert FIX in cause.message and "slim.learning.create_train_op" in cause.message
    assert cause.layers == ["conv1/BatchNorm", "conv2/BatchNorm"] and cause.runners == []
    assert "of 2 BN layers (conv1/BatchNorm, conv2/BatchNorm)" in cause.message.splitlines()[0]
    assert cause.to_dict() == {"code": "update-ops-not-run", "message": cause.message, "train_op": "GradientDescent",
                               "update_ops": cause.update_ops, "evidence": cause.evidence,
                               "layers": ["conv1/BatchNorm", "conv2/BatchNorm"]}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["create_train_op", "control_deps", "custom_run", "in_place"])
def test_a_train_op_that_runs_the_updates_is_not_blamed(graphs, mode, case):
    cause = cause_of(graphs, mode, case)
    assert cause.code == "update-ops-run" and not cause.found and cause.update_ops == []
    assert "never" not in cause.message and "control_dependencies" not in cause.message


@pytest.mark.parametrize("mode", MODES)
def test_a_custom_updates_collection_never_run_is_named(graphs, mode):
    cause = cause_of(graphs, mode, "custom_forgotten")
    assert cause.code == "custom-updates-collection-not-run" and cause.found and cause.update_ops
    assert "get_collection('bn_updates')" in cause.message


@pytest.mark.parametrize("mode", MODES)
def test_no_train_op_means_unknown(graphs, mode):
    cause = cause_of(graphs, mode, "no_train_op")
    assert cause.code == "no-train-op" and not cause.found
    assert cause.train_op is None and cause.update_ops == [] and "unknown" in cause.message


def test_an_op_grouping_the_train_op_with_the_updates_is_shown(graphs):
    """train_op collection names the bare minimize op; tf.group(minimize, *update_ops) runs both: said so."""
    cause = cause_of(graphs, "v1", "grouped")
    assert cause.code == "update-ops-not-run" and "group_deps" in cause.evidence and "group_deps runs both:" in cause.message
    # without the collection the graph cannot tell which of the two training ran
    assert cause_of(graphs, "v1", "grouped", drop_train_op_collection=True).code == "unknown"


@pytest.mark.parametrize("case, code", [("forgotten", "update-ops-not-run"), ("control_deps", "update-ops-run"),
                                        ("custom_forgotten", "custom-updates-collection-not-run")])
def test_without_the_train_op_collection_the_optimizer_step_is_the_train_op(graphs, case, code):
    cause = cause_of(graphs, "v1", case, drop_train_op_collection=True)
    assert cause.code == code and cause.train_op == "GradientDescent"
    assert any(name.endswith("ApplyGradientDescent") for name in cause.evidence)


def test_the_seed_fixture_is_named(slim_model):
    """The seed fixture trains with AdamOptimizer.minimize and no update ops (its graph also holds a
    tf.group(train_op, *update_ops) used only for pretraining variants)."""
    model = slim_model("seed")
    cause = find_cause(load_meta_graph(model.meta))
    assert cause.code == "update-ops-not-run" and cause.train_op == "Adam"
    assert {name.rsplit("/", 1)[0] for name in cause.update_ops} == set(model.bn_layers)
