"""The TF1 guard (BatchNormGuardHook) in the loops users run -- MonitoredTrainingSession, tf_slim.training.train
(hooks) and slim.learning.train (train_step_fn) -- on tiny tf-slim graphs trained for real (25 steps of random
8x8 batches), with TF1 ref variables and with resource variables + If ops. tf.estimator: tests/guard/test_estimator.py,
on TensorFlow 2.15 (2.16 and later ship none).

Buggy loops are stopped: the plain bug before the first step (the graph proves it, as `ckptfix check`), the bug
the graph cannot prove at the end of step 10 (every_n_steps), and a warm-up of 15 steps at learning rate 0 at step
20 (no verdict while the weights stand still). Correct loops, decay 0.9997 included, are never stopped."""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import forked

pytestmark = pytest.mark.subprocess  # the graphs train in processes of their own (TF1 behaviour is process-wide)

SCRIPT = Path(__file__).parents[1] / "fixtures" / "guarded_training.py"
LOOPS = ("monitored", "slim_training", "slim_learning")
CASES = ("create_train_op", "momentum_0.9997", "forgotten", "runtime_forgotten", "warmup_forgotten", "grouped_run",
         "grouped_skipped", "decay_one", "frozen_bn", "warn_only")
# v1: every loop and case; tf2 (resource variables, If ops): every case in MonitoredTrainingSession, the slim loops'
# basics (the hook's graph side is the same whatever runs it)
RUNS = {
    "v1": [f"{loop}:{case}" for loop in LOOPS for case in CASES] + ["monitored:runtime_excluded"],
    "tf2": [f"monitored:{case}" for case in CASES]
    + [f"{loop}:{case}" for loop in LOOPS[1:] for case in ("create_train_op", "forgotten", "runtime_forgotten")],
}
STEPS = 25
PROVEN = ("ckptfix guard: the train op GradientDescent never runs the 4 BN update ops of 2 BN layers (conv1/BatchNorm, "
          "conv2/BatchNorm), so the moving statistics never followed training.\nFix the training script: build the "
          "train op inside `with tf.control_dependencies(tf.compat.v1.get_collection("
          "tf.compat.v1.GraphKeys.UPDATE_OPS)):`, or with `slim.learning.create_train_op`.")
RUNTIME = ("ckptfix guard: the moving statistics of 2 of 2 BN layers (conv1/BatchNorm, conv2/BatchNorm) did not change "
           "over training steps {start}-{end} while the weights did: ")


@pytest.fixture(scope="module")
def runs() -> dict:
    def train(mode):
        result = forked.run([sys.executable, str(SCRIPT), "--graph-mode", mode, "--steps", str(STEPS), *RUNS[mode]],
                            timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return {(mode, name): run for name, run in json.loads(result.stdout.splitlines()[-1]).items()}

    with ThreadPoolExecutor(len(RUNS)) as pool:
        return {key: run for done in pool.map(train, RUNS) for key, run in done.items()}


def each(*cases):
    return [(mode, name) for mode, names in RUNS.items() for name in names if name.split(":")[1] in cases]


@pytest.mark.parametrize("mode,name", each("create_train_op", "momentum_0.9997", "grouped_run"))
def test_a_loop_that_runs_the_updates_is_never_stopped(runs, mode, name):
    run = runs[mode, name]
    assert run["stopped_at"] is None and run["steps"] == STEPS and run["warnings"] == []
    assert [v[:4] for v in run["verdicts"]] == [[0, 10, True, []], [10, 20, True, []]]


@pytest.mark.parametrize("mode,name", each("forgotten"))
def test_a_train_op_proven_to_skip_the_updates_stops_before_the_first_step(runs, mode, name):
    run = runs[mode, name]
    assert run["stopped_at"] == 0 and run["steps"] == 0 and run["message"] == PROVEN


@pytest.mark.parametrize("mode,name", each("runtime_forgotten", "grouped_skipped"))
def test_updates_the_graph_cannot_prove_missing_are_caught_at_step_10(runs, mode, name):
    run = runs[mode, name]
    assert run["stopped_at"] == 10 and run["verdicts"] == [[0, 10, True, ["conv1/BatchNorm", "conv2/BatchNorm"]]]
    assert run["message"].startswith(RUNTIME.format(start=0, end=10) + "the session runs that trained the weights "
                                                                       "never ran their update ops")
    assert run["message"].splitlines()[1].startswith("Fix: build the train op inside `with tf.control_dependencies(")


@pytest.mark.parametrize("mode,name", each("warmup_forgotten"))
def test_no_verdict_while_the_weights_stand_still(runs, mode, name):
    run = runs[mode, name]
    assert run["stopped_at"] == 20 and [v[:3] for v in run["verdicts"]] == [[0, 10, False], [0, 20, True]]


@pytest.mark.parametrize("mode,name", each("decay_one"))
def test_update_ops_that_change_nothing_decay_1_are_caught_at_step_10(runs, mode, name):
    run = runs[mode, name]
    assert run["stopped_at"] == 10
    assert "runs their update ops, yet they changed nothing" in run["message"]
    assert "decay (momentum) below 1" in run["message"].splitlines()[1]


@pytest.mark.parametrize("mode,name", each("frozen_bn"))
def test_bn_in_inference_mode_is_not_watched(runs, mode, name):
    run = runs[mode, name]
    assert run["stopped_at"] is None and run["verdicts"] == []
    assert run["warnings"] == ["ckptfix guard: off, the graph has no BN layer with update ops (none, or all in "
                               "inference mode)"]


@pytest.mark.parametrize("mode,name", each("warn_only"))
def test_warn_only_warns_and_trains_on(runs, mode, name):
    run = runs[mode, name]
    assert run["stopped_at"] is None and run["steps"] == STEPS
    assert run["warnings"][0] == PROVEN and run["warnings"][1].startswith(RUNTIME.format(start=0, end=10))


@pytest.mark.parametrize("mode,name", each("runtime_excluded"))
def test_excluded_layers_are_not_watched(runs, mode, name):
    run = runs[mode, name]
    assert run["stopped_at"] == 10 and run["verdicts"] == [[0, 10, True, ["conv1/BatchNorm"]]]
    assert "the moving statistics of 1 of 1 BN layers (conv1/BatchNorm) did not change" in run["message"]
