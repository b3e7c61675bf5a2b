"""``--plot`` / ``--summary`` and the cause, as a user meets them: real CLI processes on the stale seed checkpoint
(trained with a train op that never runs the BN update ops)."""

import json
import sys

import numpy as np
import pytest

import forked
from render.test_plot import distinct_colours, read_png

pytestmark = pytest.mark.subprocess  # each test starts processes


def ckptfix(*args, env=None, cwd=None):
    return forked.run([sys.executable, "-m", "ckptfix", *map(str, args)], timeout=600, env=env, cwd=cwd)


def test_diagnose_draws_the_plot_writes_the_summary_and_names_the_cause(slim_model, tmp_path):
    model = slim_model("seed")
    plot, summary, report = tmp_path / "drift.png", tmp_path / "drift.md", tmp_path / "report.json"
    result = ckptfix("diagnose", model.prefix, model.calib, "--plot", plot, "--summary", summary, "--report", report,
                     "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "cause: " in result.stdout and "UPDATE_OPS" in result.stdout
    assert distinct_colours(read_png(plot)) > 50
    text = summary.read_text()
    assert text.count("\n| ") >= 2 + len(model.info["bn_layers"]) - 1 and "(`update-ops-not-run`)" in text
    cause = json.loads(report.read_text())["cause"]
    assert cause["code"] == "update-ops-not-run" and cause["update_ops"]


def test_recalibrate_and_inspect_reports_carry_the_cause(slim_model, tmp_path):
    model = slim_model("seed")
    result = ckptfix("recalibrate", model.prefix, model.calib, "-o", tmp_path / "out", "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cause"]["code"] == "update-ops-not-run"
    inspected = ckptfix("inspect", model.prefix, "--json")
    assert json.loads(inspected.stdout)["cause"]["code"] == "update-ops-not-run"


def test_keras_reports_have_no_cause_to_read(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32))
    result = ckptfix("diagnose", tmp_path / "m.keras", tmp_path / "x.npy", "--json", "--no-progress")
    assert result.returncode in (0, 3), result.stderr
    assert json.loads(result.stdout)["cause"] is None


def test_plot_without_matplotlib_fails_before_the_run(slim_model, tmp_path):
    """A user without the extra gets one line naming it, exit 1, before any calibration (nothing written)."""
    model = slim_model("seed")
    blocker = tmp_path / "no_matplotlib"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    result = ckptfix("recalibrate", model.prefix, model.calib, "-o", tmp_path / "out", "--plot", tmp_path / "p.png",
                     "--no-progress", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --plot needs matplotlib: pip install 'ckptfix[plot]'"
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.png").exists()
