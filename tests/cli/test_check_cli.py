"""`ckptfix check` as a CI step, through real processes: on a .meta exported right after building the training graph
(before any step) and on a training checkpoint. Exit 0 when the train op runs the BN update ops, 3 when it never
does (the layers and the fix named, in `inspect`'s words), 5 when the graph cannot tell, 4 without BN layers, 1
for a file that is not a graph; `--json` follows docs/report.schema.json. `ckptfix.check` also answers inside a
TF1-style process and leaves it in graph mode."""

import json
import sys
from pathlib import Path

import pytest

import forked
from diagnostics.schema import validate_report

pytestmark = pytest.mark.subprocess  # each test starts processes

FIXTURES = Path(__file__).parents[1] / "fixtures"
EXPORTED = ("create_train_op", "forgotten", "grouped_skipped", "grouped_registered", "frozen_bn", "no_bn")


def run_cli(*args) -> "subprocess.CompletedProcess":
    return forked.run([sys.executable, "-m", "ckptfix", "check", *map(str, args)], timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """CASE -> what guarded_training.py --export printed: the .meta, ckptfix.check's verdict in that TF1 process."""
    result = forked.run([sys.executable, str(FIXTURES / "guarded_training.py"), "--graph-mode", "v1", "--export",
                         tmp_path_factory.mktemp("exported"), *EXPORTED], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """The prefix of a checkpoint trained two steps with the update ops forgotten (tests/fixtures/train_ops.py)."""
    result = forked.run([sys.executable, str(FIXTURES / "train_ops.py"), tmp_path_factory.mktemp("trained"),
                         "--graph-mode", "tf2", "forgotten"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])["forgotten"]


def test_the_api_answers_in_a_tf1_process_and_leaves_it_in_graph_mode(exported):
    assert {case: run["verdict"] for case, run in exported.items()} == {
        "create_train_op": "pass", "forgotten": "fail", "grouped_skipped": "unknown", "grouped_registered": "pass",
        "frozen_bn": "unknown", "no_bn": "error: no BatchNorm layers in no_bn.meta: nothing to check.",
    }
    assert not any(run["eager"] for run in exported.values())


def test_a_train_op_that_runs_the_updates_passes(exported):
    for case in ("create_train_op", "grouped_registered"):
        result = run_cli(exported[case]["meta"])
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ok: the train op ") and result.stdout.rstrip().endswith(
            f"runs the update ops of all 2 BN layers of {case}.meta.")
        assert result.stderr == ""


def test_a_train_op_that_skips_them_fails_naming_layers_and_fix(exported):
    result = run_cli(exported["forgotten"]["meta"])
    assert result.returncode == 3 and result.stderr == ""
    assert result.stdout.splitlines() == [
        "FAIL: the train op GradientDescent never runs the 4 BN update ops of 2 BN layers (conv1/BatchNorm, "
        "conv2/BatchNorm), so the moving statistics never followed training.",
        "Fix the training script: build the train op inside `with tf.control_dependencies(tf.compat.v1.get_collection("
        "tf.compat.v1.GraphKeys.UPDATE_OPS)):`, or with `slim.learning.create_train_op`.",
    ]


def test_the_same_words_as_inspect_on_a_training_checkpoint(trained):
    checked = run_cli(trained)
    inspected = forked.run([sys.executable, "-m", "ckptfix", "inspect", trained], timeout=300)
    assert checked.returncode == 3 and inspected.returncode == 0, inspected.stderr
    cause = inspected.stdout.split("\ncause: ", 1)[1].rstrip()
    assert checked.stdout.rstrip() == f"FAIL: {cause}"
    report = json.loads(run_cli(trained, "--json").stdout)
    validate_report(report)
    assert report["verdict"] == "fail" and report["cause"]["layers"] == ["conv1/BatchNorm", "conv2/BatchNorm"]
    assert report["graph"] == trained + ".meta"


def test_what_the_graph_cannot_tell_is_exit_5_with_the_way_to_tell_it(exported):
    grouped = run_cli(exported["grouped_skipped"]["meta"])
    assert grouped.returncode == 5
    assert grouped.stdout.startswith("UNKNOWN: the train op GradientDescent never runs the 4 BN update ops")
    assert "(group_deps runs both: if training ran that, look elsewhere)" in grouped.stdout
    assert grouped.stdout.splitlines()[-1] == ("To let the graph tell, register the op your loop runs: "
                                               "`tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.TRAIN_OP, "
                                               "train_op)`.")
    frozen = run_cli(exported["frozen_bn"]["meta"], "--json")
    assert frozen.returncode == 5
    report = json.loads(frozen.stdout)
    validate_report(report)
    assert report["verdict"] == "unknown" and report["cause"]["code"] == "unknown"


@pytest.mark.parametrize("case,code,phrase", [
    ("no_bn", 4, "no BatchNorm layers in no_bn.meta: nothing to check."),
    ("missing", 1, "no .meta graph at"),
    ("not_a_graph", 1, "is not a TensorFlow .meta graph: pass the .meta that "
                       "tf.compat.v1.train.export_meta_graph() or a training checkpoint wrote."),
])
def test_bad_input_is_one_line_and_its_exit_code(exported, tmp_path, case, code, phrase):
    if case == "no_bn":
        path = exported["no_bn"]["meta"]
    elif case == "missing":
        path = tmp_path / "nothing"
    else:
        path = tmp_path / "notes.meta"
        path.write_text("not a graph")
    result = run_cli(path)
    assert result.returncode == code and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0]
