"""The red-team catalogue of issue "Trust": probes that once lost user data, overwrote an input, or wrote
statistics that made a model worse while exiting 0. Each runs the real CLI (or the API) on a real slim
checkpoint and checks the exit code, the one- or two-line reason, that nothing was written, and a sha256 of
every input file and folder (names, bytes and modes) before and after."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptfix
from ckptfix.errors import CkptfixError, KeywordError, OptionError, RepairRefused
from cli.test_errors import assert_clean_error, run_cli
import forked

pytestmark = pytest.mark.subprocess  # CLI runs and fresh interpreters (make test-fast leaves them out)


def tree_digest(*roots: Path) -> str:
    """sha256 over every file's bytes and every path's name and mode below ``roots`` (a file or a folder)."""
    digest = hashlib.sha256()
    for root in roots:
        paths = [root] + (sorted(root.rglob("*")) if root.is_dir() else [])
        for path in paths:
            digest.update(os.fsencode(path.relative_to(root.parent)) + f":{oct(path.stat().st_mode)}".encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture()
def workspace(slim_model, tmp_path) -> dict:
    """A private copy of the stale seed checkpoint, its calibration images in ``data/`` (with ``x.npy``) and a
    ``notes.txt`` beside them: the inputs a probe may try to damage."""
    model = slim_model("seed")
    shutil.copytree(model.train_dir, tmp_path / "train")
    data = tmp_path / "work" / "data"
    shutil.copytree(model.images_dir, data)
    np.save(tmp_path / "work" / "x.npy", np.load(model.calib)[:64])
    (tmp_path / "work" / "notes.txt").write_text("mine")
    prefix = tmp_path / "train" / Path(model.prefix).name
    return {"root": tmp_path, "prefix": prefix, "ckpt": tmp_path / "train", "data": data,
            "array": tmp_path / "work" / "x.npy"}


def _inputs(w: dict) -> str:
    return tree_digest(w["ckpt"], w["data"].parent)


def _refused(w: dict, before: str, result, code: int, *phrases: str, written=()) -> None:
    assert_clean_error(result, code, *phrases)
    assert _inputs(w) == before
    for path in written:
        assert not Path(path).exists(), path


# ---------------------------------------------------------------------------------------------- data lost


@pytest.mark.parametrize("target", ["data", "parent"])
def test_output_never_replaces_the_calibration_data(workspace, target):
    w = workspace
    output = w["data"] if target == "data" else w["data"].parent
    before = _inputs(w)
    result = run_cli("recalibrate", w["ckpt"], w["data"], "-o", output, "--overwrite", "--no-progress")
    _refused(w, before, result, 1, "the calibration data", "choose another -o/--output")
    assert (w["data"].parent / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("data, option, target", [
    ("data", "--report", lambda w: Path(str(w["prefix"]) + ".index")),
    ("array", "--summary", lambda w: w["array"]),  # the calibration array itself
    ("data", "--plot", lambda w: w["data"] / "img_000.png"),
    ("data", "--report", lambda w: w["ckpt"] / "report.json"),  # inside the checkpoint's folder
])
def test_side_outputs_never_touch_an_input(workspace, data, option, target):
    w = workspace
    before = _inputs(w)
    out = w["root"] / "out"
    result = run_cli("recalibrate", w["ckpt"], w[data], "-o", out, option, target(w), "--no-progress")
    _refused(w, before, result, 1, option, "inputs are never written", written=[out])


@pytest.mark.parametrize("make", [
    lambda root: ("--report", root / "missing" / "r.json"),
    lambda root: ("--summary", root / "out" / "s.md"),  # inside the output folder, replaced whole
    lambda root: ("--plot", root / "drift.xyz"),
    lambda root: ("--report", root),  # a folder
])
def test_side_outputs_are_checked_before_any_work(workspace, make):
    w = workspace
    option, path = make(w["root"])
    before = _inputs(w)
    result = run_cli("recalibrate", w["ckpt"], w["data"], "-o", w["root"] / "out", option, path, "--no-progress")
    _refused(w, before, result, 1, option, written=[w["root"] / "out"])
    assert "calibrating" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_report_folder_is_refused_before_the_run(workspace):
    w = workspace
    locked = w["root"] / "locked"
    locked.mkdir(mode=0o555)
    before = _inputs(w)
    result = run_cli("recalibrate", w["ckpt"], w["data"], "-o", w["root"] / "out", "--report", locked / "r.json")
    _refused(w, before, result, 1, "not writable", written=[w["root"] / "out"])


def test_side_outputs_written_with_the_repair_in_their_format_and_the_umask(workspace):
    w = workspace
    before = _inputs(w)
    out, plot, report = w["root"] / "out", w["root"] / "drift.pdf", w["root"] / "r.json"
    result = forked.run(
        [sys.executable, "-m", "ckptfix", "recalibrate", w["ckpt"], w["data"], "-o", out, "--plot", plot,
         "--report", report, "--no-progress"],
        timeout=300, umask=0o022)
    assert result.returncode == 0, result.stderr
    assert plot.read_bytes().startswith(b"%PDF")  # the format the extension names, not a PNG
    assert f"wrote {plot}" in result.stderr and f"wrote {report}" in result.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o755"  # the umask's, as tf.train.Saver's folders
    assert oct(report.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in w["root"].iterdir() if p.name.startswith(".")]  # no staging leftovers
    assert _inputs(w) == before


# ---------------------------------------------------------------------------------------------- the gate


@pytest.fixture(scope="module")
def healthy(slim_model, tmp_path_factory) -> Path:
    """The seed checkpoint repaired once: statistics that match its data (a healthy checkpoint)."""
    model = slim_model("seed")
    out = tmp_path_factory.mktemp("healthy") / "train"
    report = ckptfix.recalibrate(model.prefix, model.calib, output=out, preprocess="raw")
    return Path(report.output_checkpoint)


def test_a_repair_its_own_check_contradicts_is_refused(healthy, slim_model, tmp_path):
    out = tmp_path / "out"
    before = tree_digest(healthy.parent)
    result = run_cli("recalibrate", healthy, slim_model("seed").calib, "-o", out, "--batch-size", "1",
                     "--num-samples", "64", "--no-progress")
    assert_clean_error(result, 5, "repair refused, nothing was written", "--force")
    assert not out.exists() and tree_digest(healthy.parent) == before
    forced = run_cli("recalibrate", healthy, slim_model("seed").calib, "-o", out, "--batch-size", "1",
                     "--num-samples", "64", "--no-progress", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "written despite the repair gate" in forced.stderr and out.is_dir()


def test_the_refusal_carries_the_report_and_the_agreement_reason(healthy, slim_model, tmp_path):
    with pytest.raises(RepairRefused) as refused:
        ckptfix.recalibrate(healthy, slim_model("seed").calib, output=tmp_path / "out", batch_size=1, num_samples=64)
    report = refused.value.report
    assert "force=True" in str(refused.value) and "--force" not in str(refused.value)
    assert not report.gate.passed and report.output_checkpoint == ""
    assert "1: BN on one sample" in report.gate.reasons[0]
    assert report.agreement is not None and report.layers  # what was measured, for the pipeline to inspect
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("lost, gained, before, after, refused", [
    (0, 0, 0.05, 0.05, False), (3, 1, 0.05, 0.05, False), (10, 0, 0.05, 0.05, True), (40, 30, 0.1, 0.1, False),
    (0, 0, 0.05, 0.072, False), (0, 0, 0.05, 0.08, True), (0, 5, 1.2, 0.03, False),
])
def test_the_agreement_rule(lost, gained, before, after, refused):
    from ckptfix.diagnostics.agreement import Agreement
    from ckptfix.diagnostics.gate import contradiction

    agreement = Agreement("logits", 64, 1.0, 1.0, before, after, top1_lost=lost, top1_gained=gained)
    assert bool(contradiction(agreement)) is refused


@pytest.mark.parametrize("samples", ["one", "zeros", "identical"])
def test_degenerate_data_never_becomes_statistics(healthy, slim_model, tmp_path, samples):
    calib = np.load(slim_model("seed").calib)
    data = {"one": calib[:1], "zeros": np.zeros_like(calib[:64]), "identical": np.repeat(calib[:1], 64, 0)}[samples]
    np.save(tmp_path / "x.npy", data)
    before = tree_digest(healthy.parent)
    diagnosed = run_cli("diagnose", healthy, tmp_path / "x.npy", "--no-progress")
    assert diagnosed.returncode == 5, diagnosed.stdout + diagnosed.stderr
    assert "INCONCLUSIVE" in diagnosed.stdout and "STALE" not in diagnosed.stdout
    result = run_cli("recalibrate", healthy, tmp_path / "x.npy", "-o", tmp_path / "out", "--no-progress")
    assert_clean_error(result, 5, "identical" if samples != "zeros" else "calibration sample")
    assert not (tmp_path / "out").exists() and tree_digest(healthy.parent) == before


def test_collapsed_channels_are_named(healthy, slim_model, tmp_path):
    """Blank images (every pixel the same, samples differ in nothing else): the first BN layer's variance is 0."""
    calib = np.load(slim_model("seed").calib)
    blank = np.zeros_like(calib[:64]) + np.linspace(-1, 1, 64, dtype=np.float32)[:, None, None, None] * 1e-9
    with pytest.raises(RepairRefused, match="constant") as refused:
        ckptfix.recalibrate(healthy, blank, output=tmp_path / "out")
    reasons = refused.value.report.gate.reasons
    assert "(nearly) constant" in reasons[0]
    assert any(re.match(r"BN layer conv1/BatchNorm: \d+ of \d+ channel\(s\)", reason) for reason in reasons)
    assert not (tmp_path / "out").exists()


def test_noisy_channels_that_move_no_decision_are_a_notice_not_a_refusal(slim_model, tmp_path):
    """A dense BN layer sees one value per sample: 24 samples leave some of its channels uncertain beyond 0.2σ,
    but the repaired decisions do not depend on them (issue 31: judged at the outputs); the repair is written,
    the noisy layer named in a notice and the output-level figure reported."""
    model = slim_model("dense")
    calib = np.load(model.calib)
    report = ckptfix.recalibrate(model.prefix, calib[:24], output=tmp_path / "out", batch_size=8)
    assert any(layer.mean_standard_error > 0.2 or layer.variance_relative_error > 0.25 for layer in report.layers)
    assert report.gate.passed and any("fc1/BatchNorm" in warning for warning in report.gate.warnings)
    assert any("the outputs do not depend on them" in notice for notice in report.notices)
    assert report.agreement.unstable is not None and report.agreement.unstable <= 0.02
    assert report.to_dict()["agreement"]["unstable"] == report.agreement.unstable
    assert report.agreement.top1_after > report.agreement.top1_before + 0.5


@pytest.fixture(scope="module")
def trained_keras(tmp_path_factory):
    """A small Keras 3 classifier trained with fit(): its BN statistics followed training (a healthy model)."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8, 8, 3)).astype(np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(np.int64)
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, padding="same"), keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(), keras.layers.Conv2D(8, 3, padding="same"), keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    folder = tmp_path_factory.mktemp("trained")
    model.save(folder / "model.keras")
    np.save(folder / "same.npy", rng.normal(size=(256, 8, 8, 3)).astype(np.float32))
    np.save(folder / "shifted.npy", (rng.normal(size=(256, 8, 8, 3)) * 1.6 + 0.3).astype(np.float32))
    return folder


def test_healthy_checkpoint_on_other_data_differs_not_stale(trained_keras, slim_model):
    """A domain shift moves healthy statistics; without evidence of a training bug the verdict is 'differs'."""
    import json

    same = run_cli("diagnose", trained_keras / "model.keras", trained_keras / "same.npy", "--json", "--no-progress")
    assert same.returncode == 0 and json.loads(same.stdout)["verdict"] == "fresh", same.stdout[-2000:]
    result = run_cli("diagnose", trained_keras / "model.keras", trained_keras / "shifted.npy", "--json",
                     "--no-progress")
    report = json.loads(result.stdout)
    assert report["stale_layers"], "the shift must move some layer past the drift thresholds"
    assert report["verdict"] == "differs" and report["evidence"] == []
    assert result.returncode == 0
    stale = run_cli("diagnose", slim_model("seed").prefix, slim_model("seed").calib, "--json", "--no-progress")
    assert stale.returncode == 3 and json.loads(stale.stdout)["verdict"] == "stale"
    assert any("initial 0/1" in e for e in json.loads(stale.stdout)["evidence"])


# ---------------------------------------------------------------------------------------------- API and CLI errors


@pytest.mark.parametrize("keywords, named", [
    (dict(batch_size=2.5), "batch_size takes int"), (dict(batch_size="32"), "batch_size takes int"),
    (dict(seed="abc"), "seed takes int"), (dict(output=123), "output takes str or path"),
    (dict(batch_size=True), "batch_size takes int"),
])
def test_api_bad_values_are_option_errors_naming_the_keyword(slim_model, keywords, named, tmp_path):
    with pytest.raises(OptionError) as raised:
        ckptfix.recalibrate(slim_model("seed").prefix, slim_model("seed").calib, **keywords)
    assert named in str(raised.value) and "--" not in str(raised.value)
    with pytest.raises(KeywordError):
        ckptfix.recalibrate(slim_model("seed").prefix, slim_model("seed").calib, against="x")


def test_api_errors_name_keywords_not_flags(slim_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(CkptfixError) as raised:
        ckptfix.recalibrate(slim_model("seed").prefix, slim_model("seed").calib, output=out)
    assert "pass overwrite=True or choose another output" in str(raised.value)
    assert "--" not in str(raised.value)


@pytest.mark.parametrize("option", [["--devices", "0"], ["--batch-size", "0"], ["--batch-size", "abc"],
                                    ["--estimator", "foo"]])
def test_bad_option_values_share_one_rule(workspace, option):
    result = run_cli("recalibrate", workspace["ckpt"], workspace["data"], *option)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and option[0] in lines[0] and len(lines) <= 2
    assert "╭" not in result.stderr and "Value error" not in result.stderr and "Input should be" not in result.stderr


# ---------------------------------------------------------------------------------------------- the commit point


def test_ctrl_c_after_the_commit_point_exits_0_with_the_output_complete(workspace):
    w = workspace
    out = w["root"] / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "ckptfix", "recalibrate", w["ckpt"], w["data"], "-o", out, "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stdout:  # the table, then the summary, then "wrote ..."
        seen.append(line)
        if line.startswith("wrote "):
            for _ in range(3):
                process.send_signal(signal.SIGINT)
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 0, stderr
    assert any(line.startswith("wrote ") for line in seen)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert (out / "checkpoint").is_file() and list(out.glob("*.index"))
