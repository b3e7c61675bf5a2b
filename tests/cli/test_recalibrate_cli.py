"""`ckptfix recalibrate` through real subprocesses on a real stale slim checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import forked


def run_cli(*args, module: bool = True) -> subprocess.CompletedProcess:
    """``python -m ckptfix`` (forked), or with ``module=False`` the installed console script, which sits beside the
    interpreter in the venv (a fresh process)."""
    if module:
        return forked.run([sys.executable, "-m", "ckptfix", *args], timeout=300)
    return subprocess.run([str(Path(sys.executable).with_name("ckptfix")), *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("form", ["folder", ".index", ".meta"])
def test_recalibrate_prints_the_table_and_writes_a_restorable_checkpoint(slim_model, tmp_path, form):
    model = slim_model("seed")
    ckpt = model.train_dir if form == "folder" else model.prefix + form
    result = run_cli("recalibrate", ckpt, model.images_dir, "-o", tmp_path / "out", "--report", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "conv1/BatchNorm" in result.stdout and "conv2/BatchNorm" in result.stdout
    assert f"wrote {tmp_path / 'out' / 'model.ckpt-150'}" in result.stdout
    assert "notice: images preprocessed with inception: x / 127.5 - 1" in result.stderr  # read from the slim scopes
    assert "calibrating" in result.stderr  # the progress, as plain lines into a file: no carriage return
    assert "\r" not in result.stderr
    # as the run happened: notices, the table (stdout), the model written, then the side outputs
    assert result.stdout.startswith("layer") and result.stderr.splitlines()[-1] == f"wrote {tmp_path / 'r.json'}"
    assert "Traceback" not in result.stderr and "cuda" not in result.stderr.lower() and "I0000" not in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_samples"] == len(list(model.images_dir.glob("*.png")))
    assert [layer["name"] for layer in report["layers"]] == ["conv1/BatchNorm", "conv2/BatchNorm"]
    assert tf.train.latest_checkpoint(str(tmp_path / "out")) == report["output_checkpoint"]


def test_default_output_is_a_sibling_and_rerun_needs_overwrite(slim_model, tmp_path):
    import shutil

    model = slim_model("dense")
    work = tmp_path / "copy"
    shutil.copytree(model.train_dir, work / "train")
    prefix = work / "train" / Path(model.prefix).name  # the state file holds absolute paths to the original
    result = run_cli("recalibrate", prefix, model.calib, "--no-progress", module=False)
    assert result.returncode == 0, result.stderr
    assert (work / "train-recalibrated" / "checkpoint").is_file()
    assert result.stderr == ""
    again = run_cli("recalibrate", prefix, model.calib, "--no-progress")
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert run_cli("recalibrate", prefix, model.calib, "--no-progress", "--overwrite").returncode == 0


def test_ambiguous_or_unknown_names_list_candidates(slim_model, tmp_path):
    model = slim_model("seed")
    result = run_cli("recalibrate", model.prefix, model.calib, "--input", "nope", "-o", tmp_path / "o")
    assert result.returncode == 1
    assert "--input nope: no such tensor" in result.stderr and "images:0" in result.stderr
    assert not (tmp_path / "o").exists()


ALLOCATOR_PROBE = """
import atexit, sys

def probe():
    import tensorflow as tf
    try:  # only an allocator that keeps statistics answers: the BFC one
        print("CPU allocator peak bytes:", tf.config.experimental.get_memory_info("CPU:0")["peak"])
    except ValueError:
        print("CPU allocator: TensorFlow's default")

atexit.register(probe)
from ckptfix.cli.app import main
sys.argv[0] = "ckptfix"
main()
"""


@pytest.mark.parametrize("setting", [None, "false"])
def test_the_cli_puts_tensorflow_on_its_bfc_cpu_allocator_unless_the_environment_says_otherwise(
    slim_model, tmp_path, setting
):
    model = slim_model("seed")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if setting is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = setting
    args = ["recalibrate", model.prefix, model.calib, "-o", tmp_path / "out", "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-c", ALLOCATOR_PROBE, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    if setting is None:
        batch_bytes = 4 * np.prod(np.load(model.calib).shape[1:])  # at least one sample went through
        assert last.startswith("CPU allocator peak bytes:") and int(last.split(":")[1]) > batch_bytes
    else:
        assert last == "CPU allocator: TensorFlow's default"
