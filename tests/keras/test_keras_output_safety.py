"""Keras / TF2 outputs go through the same atomic write as TF1 checkpoints: a full disk gives one clear line
and leaves nothing, another run's output is never replaced without --overwrite, and a TF2 checkpoint folder's
``checkpoint`` state file is read with the TF1 trust rule (only the basename, inside the folder)."""

from __future__ import annotations

import os
import resource
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptfix
import forked
import keras_models as km
from ckptfix.errors import CheckpointError, OutputError
from ckptfix.io.atomic import _exclusive_lock

HERE = Path(__file__).parent


@pytest.mark.subprocess
def test_disk_full_while_writing_a_tf2_checkpoint(keras_skipped, tmp_path):
    """RLIMIT_FSIZE of 2 KB on the CLI process: SaveV2 fails writing the output's shard (a TensorFlow op error)."""
    output = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(HERE)])}
    result = forked.run(
        [sys.executable, "-m", "ckptfix", "recalibrate", str(keras_skipped.files["tf-checkpoint"].parent),
         str(keras_skipped.calibration), "-o", str(output), "--model", "keras_models:flat_keras3",
         "--model-format", "tf-checkpoint", "--no-progress"],
        timeout=300, env=env, limits={resource.RLIMIT_FSIZE: (2048, 2048)},
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write {output}: File too large. Nothing was written; free disk space, check permissions "
        "or choose another -o."
    ]
    assert sorted(tmp_path.iterdir()) == []


class _CreatesOutputWhenRead:
    """Calibration batches that, when read, put a file at ``output``: another run's output landing while this
    run measures (after its output check, before its write)."""

    def __init__(self, samples: np.ndarray, output: Path) -> None:
        self.samples, self.output = samples, output

    def __iter__(self):
        if not self.output.exists():
            self.output.write_bytes(b"the other run's output")
        for start in range(0, len(self.samples), 32):
            yield self.samples[start:start + 32]


def test_an_output_that_appears_while_measuring_is_not_replaced(keras_frozen, tmp_path):
    output = tmp_path / "fixed.keras"
    data = _CreatesOutputWhenRead(np.load(keras_frozen.calibration), output)
    with pytest.raises(OutputError, match="appeared while writing: pass overwrite=True"):
        ckptfix.recalibrate(keras_frozen.files["keras"], data, output=output, num_samples=64, adapt=True)
    assert output.read_bytes() == b"the other run's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.keras"]  # no staging folder, no lock file


def test_a_keras_write_fails_at_once_while_another_run_holds_the_output_lock(keras_frozen, tmp_path):
    """While this process holds the output's lock (as a running writer does), the Keras write gives up."""
    output = tmp_path / "fixed.keras"
    with _exclusive_lock(output):
        with pytest.raises(OutputError, match=f"another run is writing {output} right now"):
            ckptfix.recalibrate(keras_frozen.files["keras"], keras_frozen.calibration, output=output, num_samples=64,
                                adapt=True)
    assert sorted(tmp_path.iterdir()) == []


@pytest.fixture()
def folders_with_state_files(keras_skipped, tmp_path):
    """``inside/``: the stale checkpoint ``ckpt-1``; ``outside/``: ``ckpt-1`` and ``ckpt-2`` of the same model
    with every BN moving mean 7. Returns (inside folder, outside folder)."""
    import tensorflow as tf

    source = keras_skipped.files["tf-checkpoint"]
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    for file in source.parent.glob(source.name + ".*"):
        shutil.copy(file, inside / file.name)
    model = km.flat_keras3()
    tf.train.Checkpoint(model=model).read(str(source)).assert_existing_objects_matched()
    for layer in model.layers:
        if hasattr(layer, "moving_mean"):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 7.0, np.float32))
    for name in ("ckpt-1", "ckpt-2"):
        tf.train.Checkpoint(model=model).write(str(outside / name))
    return inside, outside


def _state_file(folder: Path, named: Path) -> None:
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\nall_model_checkpoint_paths: "{named}"\n')


def test_a_tf2_state_file_naming_a_checkpoint_outside_its_folder_is_not_followed(folders_with_state_files):
    inside, outside = folders_with_state_files
    _state_file(inside, outside / "ckpt-2")  # absolute, and no ckpt-2 inside: refused
    with pytest.raises(CheckpointError, match="which is not in that folder: pass the prefix explicitly"):
        ckptfix.inspect(inside, model=km.flat_keras3, model_format="tf-checkpoint")
    with pytest.raises(CheckpointError, match="which is not in that folder"):  # detected as TF2, or not: the same rule
        ckptfix.inspect(inside, model=km.flat_keras3)

    _state_file(inside, outside / "ckpt-1")  # absolute: only its basename is used, inside the folder
    report = ckptfix.inspect(inside, model=km.flat_keras3, model_format="tf-checkpoint")
    assert report.layers and all(layer.mean_summary[2] != 7.0 for layer in report.layers)
    assert [layer.mean_summary for layer in report.layers] == [
        layer.mean_summary for layer in
        ckptfix.inspect(inside / "ckpt-1", model=km.flat_keras3, model_format="tf-checkpoint").layers
    ]


def test_a_tf2_state_file_from_another_machine_uses_the_folders_only_checkpoint_and_says_so(keras_skipped, tmp_path):
    """The TF1 rule and its notice for TF2 folders too: the named prefix does not exist here, the folder holds one."""
    source = keras_skipped.files["tf-checkpoint"]
    copied = tmp_path / "copied"
    copied.mkdir()
    for file in source.parent.glob(source.name + ".*"):
        shutil.copy(file, copied / file.name)
    _state_file(copied, Path("/home/author/run/ckpt-9"))
    report = ckptfix.inspect(copied, model=km.flat_keras3, model_format="tf-checkpoint")
    assert len(report.notices) == 1 and "/home/author/run/ckpt-9, which does not exist here" in report.notices[0]
    assert f"using {copied / source.name}, the folder's only checkpoint" in report.notices[0]
    direct = ckptfix.inspect(copied / source.name, model=km.flat_keras3, model_format="tf-checkpoint")
    assert [layer.mean_summary for layer in report.layers] == [layer.mean_summary for layer in direct.layers]
    assert direct.notices == []
