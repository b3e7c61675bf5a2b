"""The embedded demo, end to end: a real stale checkpoint collapses in inference mode and ckptfix repairs it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ckptfix import demo
from ckptfix.demo import DemoResult, build_stale_model, repair, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, DemoResult, list[str]]:
    directory = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    result = run_demo(directory, progress=False, echo=lines.append)
    return directory, result, lines


def folder_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_stale_checkpoint_collapses_in_inference_mode_only(demo_run):
    _, result, _ = demo_run
    assert result.training_accuracy >= 0.9
    assert result.inference_accuracy_before <= 0.5


def test_recalibration_recovers_inference_accuracy(demo_run):
    _, result, _ = demo_run
    assert result.inference_accuracy_after >= result.training_accuracy - 0.05


def test_repaired_checkpoint_restores_with_new_statistics(demo_run):
    _, result, _ = demo_run
    prefix = result.report.output_checkpoint
    assert tf.train.latest_checkpoint(str(result.output_dir)) == prefix
    assert Path(prefix + ".index").is_file()
    assert list(result.output_dir.glob(Path(prefix).name + ".data-*"))
    assert {layer.name: layer.channels for layer in result.report.layers} == {
        "conv1/BatchNorm": 16,
        "conv2/BatchNorm": 16,
    }
    repaired = tf.train.load_checkpoint(prefix)
    for layer in ("conv1/BatchNorm", "conv2/BatchNorm"):
        assert not np.allclose(repaired.get_tensor(f"{layer}/moving_mean"), 0.0)
        assert not np.allclose(repaired.get_tensor(f"{layer}/moving_variance"), 1.0)


def test_demo_paths_and_narration(demo_run):
    directory, result, lines = demo_run
    assert Path(result.checkpoint_prefix).parent == directory / "train"
    assert Path(result.checkpoint_prefix + ".meta").is_file()
    assert result.data_dir == directory / "calibration-images"
    assert len(list(result.data_dir.glob("*.png"))) == demo.NUM_CALIBRATION_IMAGES
    assert result.output_dir == directory / "demo-recalibrated"  # not where the suggested recalibrate writes
    narration = "\n".join(lines)
    assert f"ckptfix recalibrate {directory / 'train'} {directory / 'calibration-images'}" in narration
    assert f"{result.inference_accuracy_after:6.1%}" in narration


def test_calibration_pngs_hold_the_generated_images(demo_run):
    _, result, _ = demo_run
    expected = demo.make_dataset(demo.NUM_CALIBRATION_IMAGES, demo.CALIBRATION_SEED).pixels
    pngs = sorted(result.data_dir.glob("*.png"))
    np.testing.assert_array_equal(tf.io.decode_png(pngs[0].read_bytes()).numpy(), expected[0])
    np.testing.assert_array_equal(tf.io.decode_png(pngs[-1].read_bytes()).numpy(), expected[-1])


def test_repair_leaves_the_training_folder_byte_for_byte_unchanged(tmp_path):
    stale = build_stale_model(tmp_path, echo=lambda line: None)
    before = folder_digest(stale.train_dir)
    assert {"checkpoint", Path(stale.checkpoint_prefix).name + ".index"} <= set(before)
    repair(stale, tmp_path / "repaired", progress=False)
    assert folder_digest(stale.train_dir) == before
