"""The TF1 guard inside ``tf.estimator.Estimator.train(hooks=[guard])``, on TensorFlow releases that ship
tf.estimator (2.15 and earlier: the oldest supported one, ``make test-oldest``; skipped on later ones). The same
tiny tf-slim graph as tests/guard/test_session_hook.py, built by the Estimator's model function, trained 25 steps:
a correct train op (decay 0.9 and 0.9997) is never stopped; the seed bug is stopped before the first step with
``ckptfix check``'s proof, and with the graph check off, at step 10 by the runtime check."""

import importlib.util
import json
import sys

import pytest

import forked
from guard.test_session_hook import PROVEN, RUNTIME, SCRIPT

pytestmark = [pytest.mark.subprocess, pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_estimator") is None,
    reason="this TensorFlow ships no tf.estimator (2.16 and later): tested on the oldest supported one")]

CASES = ("create_train_op", "momentum_0.9997", "forgotten", "runtime_forgotten")


@pytest.fixture(scope="module")
def runs() -> dict:
    result = forked.run([sys.executable, str(SCRIPT), "--graph-mode", "v1", "--steps", "25",
                         *(f"estimator:{case}" for case in CASES)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {name.split(":")[1]: run for name, run in json.loads(result.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("case", ["create_train_op", "momentum_0.9997"])
def test_an_estimator_that_runs_the_updates_is_never_stopped(runs, case):
    run = runs[case]
    assert run["stopped_at"] is None and run["steps"] == 25 and run["warnings"] == []
    assert [v[:4] for v in run["verdicts"]] == [[0, 10, True, []], [10, 20, True, []]]


def test_an_estimator_whose_train_op_skips_the_updates_stops_before_the_first_step(runs):
    assert runs["forgotten"]["stopped_at"] == 0 and runs["forgotten"]["message"] == PROVEN


def test_the_runtime_check_stops_it_at_step_10(runs):
    run = runs["runtime_forgotten"]
    assert run["stopped_at"] == 10 and run["message"].startswith(RUNTIME.format(start=0, end=10))
