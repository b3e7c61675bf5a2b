"""A stale slim checkpoint repaired from a folder of real PNG and JPEG files (with two broken ones), through the
API and the CLI, and the non-finite guard on a model that overflows."""

import json

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

import ckptfix
from ckptfix.cli.app import app
from ckptfix.errors import DataError
from fixtures.runner import evaluate


@pytest.fixture(scope="module")
def photo_folder(slim_model, tmp_path_factory):
    """The seed model's 64 calibration PNGs, half re-encoded as JPEG, plus a truncated JPEG and a garbage PNG."""
    model = slim_model("seed")
    folder = tmp_path_factory.mktemp("photos")
    for i, png in enumerate(sorted(model.images_dir.glob("*.png"))):
        data = png.read_bytes()
        if i % 2:
            pixels = tf.io.decode_png(data)
            (folder / f"{png.stem}.jpg").write_bytes(tf.io.encode_jpeg(pixels, quality=95).numpy())
        else:
            (folder / png.name).write_bytes(data)
    jpeg = (folder / "img_001.jpg").read_bytes()
    (folder / "zz_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "zz_garbage.png").write_bytes(b"\x89PNG not really")
    return model, folder


def test_repair_from_png_and_jpeg_files(photo_folder, tmp_path):
    model, folder = photo_folder
    notices = []
    report = ckptfix.recalibrate(model.prefix, folder, output=tmp_path / "fixed", batch_size=16,
                                 on_notice=notices.append, agreement_samples=0)
    assert report.num_samples == 64 and report.samples_skipped == 2
    assert sorted(p.rsplit("/", 1)[-1] for p in report.skipped_files) == ["zz_garbage.png", "zz_truncated.jpg"]
    assert "66 image file(s)" in report.data_source
    assert any("x / 127.5 - 1" in n for n in notices) and any("zz_truncated.jpg" in n for n in notices)
    assert report.to_dict()["samples_skipped"] == 2
    stale = model.info["accuracy"]["inference"]
    repaired = evaluate(model, report.output_checkpoint, "inference")
    assert stale <= 0.45 and repaired >= 0.9, (stale, repaired)


def test_cli_strict_refuses_and_reports_json(photo_folder, tmp_path):
    model, folder = photo_folder
    runner = CliRunner()
    result = runner.invoke(app, ["recalibrate", model.prefix, str(folder), "-o", str(tmp_path / "a"), "--strict",
                                 "--no-progress"])
    assert result.exit_code == 1 and "zz_" in result.output and "--strict" in result.output
    assert not (tmp_path / "a").exists()
    result = runner.invoke(app, ["recalibrate", model.prefix, str(folder), "-o", str(tmp_path / "b"), "--no-progress",
                                 "--num-samples", "40", "--batch-size", "10", "--seed", "1", "--report",
                                 str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["num_samples"] == 40 and "image file(s)" in saved["data_source"]


def test_same_seed_same_statistics(photo_folder, tmp_path):
    model, folder = photo_folder
    runs = [
        ckptfix.recalibrate(model.prefix, folder, output=tmp_path / name, seed=seed, batch_size=8,
                            estimator="batch-mean", agreement_samples=0)
        for name, seed in (("a", 5), ("b", 5), ("c", 6))
    ]
    means = [np.concatenate([layer.new_variance for layer in r.layers]) for r in runs]
    np.testing.assert_array_equal(means[0], means[1])
    assert not np.array_equal(means[0], means[2])  # batch-mean depends on the batch composition


def test_overflowing_model_is_refused_and_nothing_written(slim_model, tmp_path):
    model = slim_model("seed")
    huge = np.load(model.calib) * np.float32(3e38)
    with pytest.raises(DataError, match="BN layer .* got NaN or Inf statistics from batch 0"):
        ckptfix.recalibrate(model.prefix, huge, output=tmp_path / "out", agreement_samples=0)
    assert not (tmp_path / "out").exists()
