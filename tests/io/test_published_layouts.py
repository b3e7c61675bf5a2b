"""Checkpoint layouts published TF1 models ship (issue 14 items 1, 2, 5), written for real by tf.compat.v1 Saver.

* a prefix ending in ``/``: ``Saver.save(sess, "run/")`` writes ``run/.index``, ``run/.meta``,
  ``run/.data-00000-of-00001`` and ``run/checkpoint`` (the empty basename);
* a folder whose ``checkpoint`` state file names a path on the author's machine;
* a ``.data`` shard cut short.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ckptfix.errors import CheckpointError
from ckptfix.io import locate_checkpoint
import forked

AUTHOR_PATH = "/home/author/experiments/1554202457run/"  # what the author's Saver wrote; nothing here


def _resave(meta: Path, source_prefix: str, save_path: str) -> str:
    """Restore ``source_prefix`` into the graph of ``meta`` and save it with ``Saver.save(sess, save_path)``."""
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=True)
        with tf.compat.v1.Session(graph=graph) as session:
            saver.restore(session, source_prefix)
            return saver.save(session, save_path)


@pytest.fixture(scope="module")
def slim_run(slim_model, tmp_path_factory):
    """The stale tf-slim ``seed`` model re-saved with the prefix ``<root>/run/``; (folder, calibration .npy)."""
    seed = slim_model("seed")
    root = tmp_path_factory.mktemp("published")
    written = _resave(Path(seed.prefix + ".meta"), seed.prefix, str(root / "run") + "/")
    assert written == str(root / "run") + "/" and (root / "run" / ".index").is_file()
    return root / "run", seed.calib


def _copy(folder: Path, destination: Path) -> Path:
    shutil.copytree(folder, destination)
    return destination


def _ckptfix(*args) -> subprocess.CompletedProcess:
    return forked.run([sys.executable, "-m", "ckptfix", *map(str, args)], timeout=600,
                      env={**os.environ, "CKPTFIX_DEBUG": ""})


def _stored_means(meta: Path, prefix: str) -> dict[str, np.ndarray]:
    """The moving means the user's own Saver restores from ``prefix`` into the graph of ``meta``."""
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=True)
        with tf.compat.v1.Session(graph=graph) as session:
            saver.restore(session, prefix)
            means = [v for v in tf.compat.v1.global_variables() if v.op.name.endswith("moving_mean")]
            return {v.op.name: value for v, value in zip(means, session.run(means))}


# ------------------------------------------------------------------------------------- item 1: empty basename
@pytest.mark.parametrize("form", ["folder", "prefix", ".index", ".meta", ".data-00000-of-00001", "checkpoint"])
def test_every_form_of_an_empty_basename_names_the_checkpoint(slim_run, form):
    folder, _ = slim_run
    given = {"folder": folder, "prefix": f"{folder}/"}.get(form, folder / form)
    files = locate_checkpoint(given)
    assert str(files.prefix) == f"{folder}/" and files.prefix.name == ""
    assert files.meta == folder / ".meta" and files.index == folder / ".index"
    assert files.files == [folder / ".data-00000-of-00001", folder / ".index"]


def test_a_folder_holding_only_an_empty_basename_is_that_prefix(slim_run, tmp_path):
    folder = _copy(slim_run[0], tmp_path / "run")
    (folder / "checkpoint").unlink()
    assert str(locate_checkpoint(folder).prefix) == f"{folder}/"


def test_recalibrate_an_empty_basename_restores_with_the_users_saver(slim_run, tmp_path):
    folder = _copy(slim_run[0], tmp_path / "run")
    run = _ckptfix("recalibrate", folder / ".index", slim_run[1], "--no-progress", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    out = tmp_path / "run-recalibrated"  # the default: beside the checkpoint's folder
    assert report["output_dir"] == str(out) and report["output_checkpoint"] == f"{out}/"
    assert sorted(p.name for p in out.iterdir()) == [".data-00000-of-00001", ".index", ".meta", "checkpoint"]
    latest = tf.train.latest_checkpoint(str(out))
    assert latest is not None
    for prefix in (latest, report["output_checkpoint"]):
        means = _stored_means(out / ".meta", prefix)
        assert len(means) == len(report["layers"])
        for layer in report["layers"]:
            np.testing.assert_allclose(means[layer["mean_key"]], layer["new_mean"], rtol=1e-6, atol=1e-7)
    stale = _stored_means(folder / ".meta", f"{folder}/")
    assert all(np.all(stale[key] == 0) for key in stale)  # what was repaired was stale; the input is untouched


# ------------------------------------------------------------------- item 2: a state file from another machine
def _state_file(folder: Path, named: str) -> None:
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\nall_model_checkpoint_paths: "{named}"\n')


def test_a_state_file_from_another_machine_uses_the_only_checkpoint_and_says_so(slim_run, slim_model, tmp_path):
    folder = _copy(slim_run[0], tmp_path / "copied")
    _state_file(folder, AUTHOR_PATH)  # as shipped: the author's absolute path, which ends in "/"
    assert (folder / "checkpoint").read_text().count(AUTHOR_PATH) == 2
    files = locate_checkpoint(folder)
    assert str(files.prefix) == f"{folder}/" and AUTHOR_PATH in files.notice and "does not exist here" in files.notice
    _state_file(folder, "/home/author/experiments/model.ckpt-5000")  # another basename: the folder's only one
    files = locate_checkpoint(folder)
    assert str(files.prefix) == f"{folder}/" and "the folder's only checkpoint" in files.notice

    _state_file(folder, AUTHOR_PATH)
    run = _ckptfix("inspect", folder, "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert len(report["layers"]) == len(slim_model("seed").bn_layers) and any(AUTHOR_PATH in notice for notice in report["notices"])
    assert AUTHOR_PATH in run.stderr  # the notice is shown on the terminal too

    run = _ckptfix("diagnose", folder, slim_run[1], "--no-progress", "--json", "--num-samples", "64")
    assert run.returncode == 3, run.stderr  # stale
    assert any(AUTHOR_PATH in notice for notice in json.loads(run.stdout)["notices"])


def test_a_state_file_from_another_machine_with_a_matching_basename(slim_model, tmp_path):
    seed = slim_model("seed")
    folder = _copy(Path(seed.train_dir), tmp_path / "copied")
    basename = Path(seed.prefix).name
    _state_file(folder, f"/home/author/train/{basename}")
    files = locate_checkpoint(folder)
    assert files.prefix == folder / basename  # the one trust rule: the basename, inside
    assert "the folder's checkpoint of that basename" in files.notice
    _state_file(folder, str(folder / basename))  # the path as it is here: no notice
    assert locate_checkpoint(folder).notice is None


def test_several_candidates_are_listed(slim_run, slim_model, tmp_path):
    folder = _copy(slim_run[0], tmp_path / "copied")
    seed = slim_model("seed")
    for file in Path(seed.train_dir).glob(Path(seed.prefix).name + ".*"):
        shutil.copy(file, folder / file.name)
    _state_file(folder, AUTHOR_PATH + "model.ckpt-7")
    with pytest.raises(CheckpointError, match="not in that folder: pass the prefix explicitly") as raised:
        locate_checkpoint(folder)
    assert f"{folder}/," in str(raised.value) and str(folder / Path(seed.prefix).name) in str(raised.value)
    run = _ckptfix("inspect", folder)
    assert run.returncode == 1 and run.stderr.startswith("error:") and "Traceback" not in run.stderr
    assert Path(seed.prefix).name in run.stderr


def test_a_state_file_naming_an_existing_checkpoint_elsewhere_is_still_refused(slim_run, tmp_path):
    elsewhere = _copy(slim_run[0], tmp_path / "elsewhere")
    folder = _copy(slim_run[0], tmp_path / "copied")
    for file in list(folder.iterdir()):
        if file.name != "checkpoint":
            file.rename(folder / ("model.ckpt-1" + file.name))
    _state_file(folder, f"{elsewhere}/")  # exists, outside the folder: never followed, never replaced
    with pytest.raises(CheckpointError, match="which is not in that folder: pass the prefix explicitly"):
        locate_checkpoint(folder)


# ------------------------------------------------------------------------------- item 5: a truncated .data shard
@pytest.fixture(scope="module", params=[100, -8], ids=["cut-to-100-bytes", "last-8-bytes-missing"])
def truncated(request, slim_model, tmp_path_factory) -> Path:
    """A copy of the seed model's checkpoint folder with its ``.data`` shard cut to 100 bytes (the BN statistics
    of conv1 still readable), or missing only its last 8 bytes (every BN statistic readable)."""
    seed = slim_model("seed")
    folder = tmp_path_factory.mktemp("truncated") / "train"
    shutil.copytree(seed.train_dir, folder)
    (shard,) = folder.glob("*.data-00000-of-00001")
    with open(shard, "r+b") as file:
        file.truncate(request.param if request.param > 0 else shard.stat().st_size + request.param)
    return folder


@pytest.mark.parametrize("command", ["inspect", "diagnose", "recalibrate"])
def test_a_truncated_shard_is_a_one_line_error_naming_the_fix(truncated, slim_model, tmp_path, command):
    data = [slim_model("seed").calib] if command != "inspect" else []
    output = ["-o", tmp_path / "out"] if command == "recalibrate" else []
    progress = [] if command == "inspect" else ["--no-progress"]
    run = _ckptfix(command, truncated, *data, *output, *progress)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), run.stderr
    assert "is truncated" in lines[0] and lines[0].endswith("restore the checkpoint from a good copy.")
    assert not (tmp_path / "out").exists()


def test_a_missing_shard_of_several_is_named(slim_model, tmp_path):
    seed = slim_model("seed")
    folder = _copy(Path(seed.train_dir), tmp_path / "train")
    (shard,) = folder.glob("*.data-00000-of-00001")
    shard.rename(shard.with_name(shard.name.replace("-00000-of-00001", "-00001-of-00002")))
    with pytest.raises(CheckpointError, match="shard 0 of checkpoint .* is missing: restore the checkpoint"):
        locate_checkpoint(folder)
