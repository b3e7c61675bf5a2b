"""The red-team catalogue of issue "Robustness, round three": probes that printed a traceback, hung, left a file
behind or touched a file the user did not name as an output. Each runs the real CLI (or the API in a process of
its own) on a real slim checkpoint or Keras model, and checks the exit code, what was printed, what was written
and a sha256 of every input (names, bytes and modes) before and after."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import ckptfix
from ckptfix.errors import CkptfixError, DataError, OptionError
from cli.test_errors import assert_clean_error, run_cli
from redteam.test_trust import tree_digest
import forked

pytestmark = pytest.mark.subprocess  # CLI runs and processes of their own (make test-fast leaves them out)


@pytest.fixture()
def w(slim_model, tmp_path) -> dict:
    """A private copy of the stale seed checkpoint and its calibration images and array: the inputs."""
    model = slim_model("seed")
    shutil.copytree(model.train_dir, tmp_path / "train")
    shutil.copytree(model.images_dir, tmp_path / "data" / "images")
    np.save(tmp_path / "data" / "x.npy", np.load(model.calib)[:64])
    return {"root": tmp_path, "ckpt": tmp_path / "train", "prefix": tmp_path / "train" / Path(model.prefix).name,
            "images": tmp_path / "data" / "images", "array": tmp_path / "data" / "x.npy"}


def _inputs(w: dict) -> str:
    return tree_digest(w["ckpt"], w["images"].parent)


def _listing(folder: Path) -> list[str]:
    """Every name below ``folder``, hidden ones included (staging folders, lock files)."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr.replace("error:", ""), result.stderr


# ---------------------------------------------------------------------------------------------- a one-channel Keras model


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> Path:
    """A small Keras 3 model taking one-channel 16x16 images, with BN, saved as ``model.keras``; ``grey.npy``
    holds 64 uint8 images ``(64, 16, 16, 1)`` for it, and ``layers.py`` a module its --import cases name."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    folder = tmp_path_factory.mktemp("grey")
    model.save(folder / "model.keras")
    rng = np.random.default_rng(0)
    np.save(folder / "grey.npy", rng.integers(0, 256, size=(64, 16, 16, 1), dtype=np.uint8))
    code = folder / "code"
    code.mkdir()
    (code / "raises.py").write_text("def helper():\n    raise ValueError('boom at import')\n\n\nhelper()\n\n\ndef f(x):\n    return x\n")
    (code / "broken_syntax.py").write_text("def f(x)\n    return x\n")
    (code / "callraise.py").write_text(textwrap.dedent("""\
        def f(image):
            return helper(image)


        def helper(image):
            raise RuntimeError("my preprocess is broken")


        def model(images, num_classes=4, is_training=False):
            raise KeyError("no such net")
        """))
    (code / "needs_missing.py").write_text("import not_installed_anywhere_xyz\n")
    return folder


def test_uint8_one_channel_images_for_a_one_channel_model(grey, tmp_path):
    """Item 2: the integer images are preprocessed (grey stays grey); the CLI and the API with uint8 batches."""
    before = tree_digest(grey / "model.keras", grey / "grey.npy")
    result = run_cli("diagnose", grey / "model.keras", grey / "grey.npy", "--preprocess", "unit", "--no-progress", "--json")
    assert result.returncode in (0, 3, 5), result.stderr
    _no_traceback(result)
    assert json.loads(result.stdout)["num_samples"] == 64
    pixels = np.load(grey / "grey.npy")
    report = ckptfix.diagnose(grey / "model.keras", [pixels[:32], pixels[32:]], preprocess="unit")
    assert report.num_samples == 64
    assert tree_digest(grey / "model.keras", grey / "grey.npy") == before


# ---------------------------------------------------------------------------------------------- the API in a process


def _api(code: str, timeout: float = 240) -> object:
    """Run ``code`` (ckptfix imported; prints its result) in a process of its own, killed after ``timeout``."""
    script = "import ckptfix, numpy as np, tensorflow as tf\n" + textwrap.dedent(code)
    return forked.run([sys.executable, "-c", script], timeout=timeout)


def test_an_infinite_dataset_is_refused_unless_bounded(w):
    """Item 3: ``.repeat()`` (cardinality infinite) is refused at once; ``num_samples`` bounds it."""
    before = _inputs(w)
    start = time.monotonic()
    result = _api(f"""
        x = np.load({str(w["array"])!r})
        try:
            ckptfix.diagnose({str(w["prefix"])!r}, tf.data.Dataset.from_tensor_slices(x).repeat())
        except ckptfix.errors.DataError as error:
            print("refused:", error)
        report = ckptfix.diagnose({str(w["prefix"])!r}, tf.data.Dataset.from_tensor_slices(x).repeat(), num_samples=96)
        print("bounded:", report.num_samples)
        """)
    assert result.returncode == 0, result.stderr
    assert "refused: the tf.data.Dataset never ends" in result.stdout and "num_samples=N" in result.stdout
    assert "bounded: 96" in result.stdout
    assert time.monotonic() - start < 200
    assert _inputs(w) == before


def test_an_image_named_in_bytes_that_are_not_utf8(w):
    """Item 4: a file name Python holds with surrogates (not UTF-8) is read like any other image."""
    first = sorted(w["images"].iterdir())[0]
    os.rename(os.fsencode(first), os.fsencode(w["images"]) + b"/img_\xff\xfe.png")
    before = _inputs(w)
    result = run_cli("diagnose", w["ckpt"], w["images"], "--no-progress", "--json")
    assert result.returncode == 3, result.stderr
    _no_traceback(result)
    assert json.loads(result.stdout)["num_samples"] == 64 and json.loads(result.stdout)["samples_skipped"] == 0
    assert _inputs(w) == before


# ---------------------------------------------------------------------------------------------- the user's code


def _theirs(result, header: str, file: Path, *lines: str) -> None:
    """The one line naming the option, then their traceback: only their file's frames."""
    assert result.returncode == 1, result.stderr
    printed = [line for line in result.stderr.strip().splitlines() if not line.startswith("notice: ")]
    assert printed[0].startswith(f"error: {header}: your code raised "), result.stderr
    assert printed[1] == "Traceback (most recent call last, your code only):"
    assert f'File "{file}"' in result.stderr
    for line in lines:
        assert line in printed, result.stderr
    assert "site-packages" not in result.stderr and "ckptfix/" not in result.stderr and "<frozen" not in result.stderr


@pytest.mark.parametrize("option, spec, file, last", [
    ("--preprocess", "raises:f", "raises.py", "ValueError: boom at import"),
    ("--preprocess", "callraise:f", "callraise.py", "RuntimeError: my preprocess is broken"),
    ("--preprocess", "broken_syntax:f", "broken_syntax.py", "SyntaxError: expected ':'"),
    ("--model", "raises:f", "raises.py", "ValueError: boom at import"),
    ("--model", "callraise:model", "callraise.py", "KeyError: 'no such net'"),
    ("--model", "needs_missing:f", "needs_missing.py", "ModuleNotFoundError: No module named 'not_installed_anywhere_xyz'"),
])
def test_errors_in_the_users_slim_code_are_shown_as_theirs(w, grey, option, spec, file, last):
    """Item 5: their module raising at import, their function raising (traced by tf.data: AutoGraph's frames
    mapped back to their file), a syntax error, an import their module makes: their traceback, nothing of ours."""
    before = _inputs(w)
    extra = ["--input-shape", "12x12x3"] if spec == "callraise:model" else []
    result = forked.run([sys.executable, "-m", "ckptfix", "diagnose", w["ckpt"], w["images"], option, spec,
                         "--no-progress", *extra], env={**os.environ, "PYTHONPATH": str(grey / "code")}, timeout=300)
    _theirs(result, f"{option} {spec}", grey / "code" / file, last)
    assert _inputs(w) == before


@pytest.mark.parametrize("spec, file, last", [
    ("raises", "raises.py", "ValueError: boom at import"),
    ("broken_syntax", "broken_syntax.py", "SyntaxError: expected ':'"),
])
def test_errors_in_an_imported_keras_module_are_shown_as_theirs(grey, spec, file, last):
    before = tree_digest(grey / "model.keras", grey / "grey.npy")
    result = forked.run([sys.executable, "-m", "ckptfix", "diagnose", grey / "model.keras", grey / "grey.npy",
                         "--import", spec, "--no-progress"], env={**os.environ, "PYTHONPATH": str(grey / "code")},
                        timeout=300)
    _theirs(result, f"--import {spec}", grey / "code" / file, last)
    assert tree_digest(grey / "model.keras", grey / "grey.npy") == before


@pytest.mark.parametrize("option, spec, phrase", [
    ("--import", "", "expected package.module"),
    ("--import", ":X", "expected package.module"),
    ("--import", "../etc", "../etc is not a module name"),
    ("--import", "not_installed_anywhere_xyz", "cannot import not_installed_anywhere_xyz"),
    ("--preprocess", "./prints:f", "./prints is not a module name"),
    ("--preprocess", "../x:f", "../x is not a module name"),
])
def test_user_code_that_names_no_module_is_one_line(grey, option, spec, phrase):
    before = tree_digest(grey / "model.keras", grey / "grey.npy")
    result = run_cli("diagnose", grey / "model.keras", grey / "grey.npy", option, spec, "--no-progress")
    assert_clean_error(result, 1, phrase, "PYTHONPATH" if "module name" in phrase else phrase)
    assert tree_digest(grey / "model.keras", grey / "grey.npy") == before


def test_api_values_of_the_wrong_kind_are_one_line_errors(w, grey):
    """Item 5, the API: a bad checkpoint, custom_objects or seed is an error naming the keyword."""
    model, calib = str(w["prefix"]), np.load(w["array"])
    for checkpoint in (123, None):
        with pytest.raises(OptionError, match=f"checkpoint takes str or path, not {type(checkpoint).__name__}"):
            ckptfix.inspect(checkpoint)
    with pytest.raises(OptionError, match="custom_objects takes dict or str or tuple or list, not int"):
        ckptfix.inspect(grey / "model.keras", custom_objects=123)
    with pytest.raises(CkptfixError, match="custom_objects '': expected package.module"):
        ckptfix.inspect(grey / "model.keras", custom_objects=[""])
    with pytest.raises(OptionError, match="seed must be at least 0"):
        ckptfix.diagnose(model, calib, seed=-1)


def test_keras_style_batches_with_sample_weights(w):
    """Item 5: ``(x, y, sample_weight)`` batches, as ``Model.fit`` takes them: x is used, the rest ignored."""
    calib = np.load(w["array"])
    batches = [(calib[k:k + 16], np.zeros(16, np.int64), np.ones(16, np.float32)) for k in range(0, 64, 16)]
    report = ckptfix.diagnose(w["prefix"], batches)
    assert report.num_samples == 64
    plain = ckptfix.diagnose(w["prefix"], [calib[k:k + 16] for k in range(0, 64, 16)])
    assert [layer.new_mean.tolist() for layer in report.layers] == [layer.new_mean.tolist() for layer in plain.layers]


# ---------------------------------------------------------------------------------------------- signals


def test_sigterm_to_an_api_caller_cleans_up_and_ends_the_process(w):
    """Item 6, the API: a process that left SIGTERM at its default is still ended by it, after the clean-up."""
    run = w["root"] / "run"
    run.mkdir()
    np.save(run / "long.npy", np.tile(np.load(w["array"]), (200, 1, 1, 1)))
    out = run / "out"
    before = _inputs(w)
    process = forked.start([sys.executable, "-c", textwrap.dedent(f"""\
        import ckptfix
        ckptfix.recalibrate({str(w["prefix"])!r}, {str(run / "long.npy")!r}, output={str(out)!r}, batch_size=4,
                            progress=True)
        """)])
    deadline = time.monotonic() + 180
    while "calibrating" not in process.peek()[1]:
        assert process.poll() is None and time.monotonic() < deadline, process.peek()[1]
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == -signal.SIGTERM
    process.communicate()
    assert _listing(run) == ["long.npy"]  # no output, staging folder or lock
    assert _inputs(w) == before


# ---------------------------------------------------------------------------------------------- the user's files


def test_overwrite_never_replaces_a_folder_of_the_users_files(w):
    """Item 8: a typo'd -o naming a folder of other files is refused, even with --overwrite, untouched."""
    thesis = w["root"] / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("three years")
    (thesis / "photos").mkdir()
    before, theirs = _inputs(w), tree_digest(thesis)
    result = run_cli("recalibrate", w["ckpt"], w["array"], "-o", thesis, "--overwrite", "--no-progress")
    assert_clean_error(result, 1, "holds chapter1.tex and 1 more file(s), which ckptfix did not write",
                       "choose another -o/--output")
    assert tree_digest(thesis) == theirs and _inputs(w) == before
    assert sorted(p.name for p in w["root"].iterdir()) == ["data", "thesis", "train"]


def test_overwrite_replaces_an_earlier_output_and_keeps_a_link(w):
    """Items 7 and 8: an earlier output is replaced; ``-o`` as a link to a folder writes that folder and the
    link stays a link, with nothing hidden left beside either."""
    real, link = w["root"] / "real", w["root"] / "link_out"
    real.mkdir()
    link.symlink_to(real)
    before = _inputs(w)
    for _ in range(2):  # the second run replaces the first's output (a checkpoint folder ckptfix wrote)
        result = run_cli("recalibrate", w["ckpt"], w["array"], "-o", link, "--overwrite", "--no-progress")
        assert result.returncode == 0, result.stderr
        assert link.is_symlink() and os.readlink(link) == str(real)
        name = w["prefix"].name
        assert sorted(p.name for p in real.iterdir()) == ["checkpoint", f"{name}.data-00000-of-00001", f"{name}.index",
                                                          f"{name}.meta"]
        assert sorted(p.name for p in w["root"].iterdir()) == ["data", "link_out", "real", "train"]
    (real / "eval-notes.txt").write_text("mine")  # something the user added since: no longer replaced
    result = run_cli("recalibrate", w["ckpt"], w["array"], "-o", link, "--overwrite", "--no-progress")
    assert_clean_error(result, 1, "holds eval-notes.txt, which ckptfix did not write")
    assert (real / "eval-notes.txt").read_text() == "mine" and _inputs(w) == before


def test_overwrite_never_replaces_a_file_that_is_no_model(grey, tmp_path):
    """Item 8, file outputs: an existing ``-o`` file is replaced only when it is a model file of that kind."""
    fake = tmp_path / "notes.keras"
    fake.write_text("my notes, named .keras by mistake")
    before = tree_digest(grey / "model.keras", grey / "grey.npy")
    result = run_cli("recalibrate", grey / "model.keras", grey / "grey.npy", "-o", fake, "--overwrite",
                     "--no-progress", "--force")
    assert_clean_error(result, 1, "is not a .keras file")
    assert fake.read_text() == "my notes, named .keras by mistake"
    assert tree_digest(grey / "model.keras", grey / "grey.npy") == before


@pytest.mark.parametrize("option, name", [("--report", "r.json"), ("--summary", "s.md"), ("--plot", "p.svg")])
def test_existing_side_outputs_need_overwrite(w, option, name):
    """Item 9: an existing side output is refused before any work without --overwrite, replaced with it."""
    side = w["root"] / name
    side.write_text("earlier")
    out = w["root"] / "out"
    before = _inputs(w)
    result = run_cli("recalibrate", w["ckpt"], w["array"], "-o", out, option, side, "--no-progress")
    assert_clean_error(result, 1, f"{option} {side} exists: pass --overwrite")
    assert side.read_text() == "earlier" and not out.exists() and "calibrating" not in result.stderr
    diagnosed = run_cli("diagnose", w["ckpt"], w["array"], option, side, "--overwrite", "--no-progress")
    assert diagnosed.returncode == 3, diagnosed.stderr
    assert side.read_text() != "earlier" and _inputs(w) == before


def test_side_outputs_given_as_links_update_their_target(w):
    """Item 9: a link stays a link; the file it points to gets the report."""
    target, link = w["root"] / "kept" / "report.json", w["root"] / "r.json"
    target.parent.mkdir()
    target.write_text("{}")
    link.symlink_to(target)
    before = _inputs(w)
    result = run_cli("diagnose", w["ckpt"], w["array"], "--report", link, "--overwrite", "--no-progress")
    assert result.returncode == 3, result.stderr
    assert link.is_symlink() and json.loads(target.read_text())["kind"] == "diagnosis"
    assert _listing(w["root"] / "kept") == ["report.json"] and _inputs(w) == before


def test_the_github_step_summary_is_appended_to(w):
    """Item 9: ``--summary "$GITHUB_STEP_SUMMARY"`` adds to the step summary file (other steps' content kept),
    no --overwrite needed; another file is still refused."""
    summary = w["root"] / "step_summary"
    summary.write_text("## tests\n\nall passed\n")
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    before = _inputs(w)
    for _ in range(2):
        result = forked.run([sys.executable, "-m", "ckptfix", "diagnose", w["ckpt"], w["array"], "--summary", summary,
                             "--no-progress"], env=env, timeout=300)
        assert result.returncode == 3, result.stderr
    text = summary.read_text()
    assert text.startswith("## tests\n\nall passed\n\n") and text.count("ckptfix diagnosis") == 2
    other = w["root"] / "other.md"
    other.write_text("x")
    result = forked.run([sys.executable, "-m", "ckptfix", "diagnose", w["ckpt"], w["array"], "--summary", other,
                         "--no-progress"], env=env, timeout=300)
    assert_clean_error(result, 1, "exists: pass --overwrite")
    assert _inputs(w) == before


# ---------------------------------------------------------------------------------------------- messages and exit codes


@pytest.mark.parametrize("option", [["--central-crop", "1.5"], ["--central-crop", "0"], ["--image-size", "0"],
                                    ["--image-size", "0x224"], ["--cluster-timeout", "0"], ["--seed", "-1"]])
def test_out_of_range_values_exit_2_before_any_work(w, option):
    before = _inputs(w)
    result = run_cli("recalibrate", w["ckpt"], w["images"], "-o", w["root"] / "out", *option)
    assert_clean_error(result, 2, f"error: {option[0]} ")
    assert "calibrating" not in result.stderr and not (w["root"] / "out").exists() and _inputs(w) == before


def test_a_report_below_a_file_names_the_file(w):
    blocker = w["root"] / "afile"
    blocker.write_text("x")
    result = run_cli("recalibrate", w["ckpt"], w["array"], "-o", w["root"] / "out", "--report", blocker / "r.json")
    assert_clean_error(result, 1, f"{blocker} is a file, not a folder")
    assert not (w["root"] / "out").exists()


def test_a_state_file_naming_something_that_is_no_checkpoint(w):
    (w["ckpt"] / "notes").write_text("x")
    (w["ckpt"] / "checkpoint").write_text(f'model_checkpoint_path: "{w["ckpt"] / "notes"}"\n')
    before = _inputs(w)
    result = run_cli("inspect", w["ckpt"])
    assert result.returncode == 0, result.stderr
    assert f"names {w['ckpt'] / 'notes'}, which is not a checkpoint (no .index file): using {w['prefix']}" in result.stderr
    assert _inputs(w) == before


def test_a_checkpoint_path_whose_dotdot_passes_through_a_link(w):
    """``a/link/../train/PREFIX`` where ``a/link`` points into another folder: ``..`` is that folder's parent."""
    elsewhere = w["root"] / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    shutil.move(w["ckpt"], elsewhere / "train")
    (w["root"] / "a").mkdir()
    (w["root"] / "a" / "link").symlink_to(elsewhere / "sub")
    result = run_cli("diagnose", f"{w['root']}/a/link/../train/{w['prefix'].name}", w["array"], "--no-progress")
    assert result.returncode == 3, result.stderr
    _no_traceback(result)


def test_a_one_task_tf_config_naming_another_task(w):
    config = {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}
    before = _inputs(w)
    result = forked.run([sys.executable, "-m", "ckptfix", "recalibrate", w["ckpt"], w["array"], "-o", w["root"] / "out",
                         "--no-progress"], env={**os.environ, "TF_CONFIG": json.dumps(config)}, timeout=300)
    assert_clean_error(result, 1, "TF_CONFIG's task worker 3 is not in its cluster of 1 task(s)")
    assert not (w["root"] / "out").exists() and _inputs(w) == before
