"""The bad-input catalogue on a real slim checkpoint, through the CLI: exit 1, one or two lines naming the
fix, no traceback, no TensorFlow noise, nothing written, the input untouched."""

import hashlib
import shutil
from pathlib import Path

import pytest

from cli.test_errors import assert_clean_error, run_cli


@pytest.fixture()
def copy(slim_model, tmp_path) -> Path:
    """A private copy of the stale seed checkpoint (prefix path), to damage."""
    model = slim_model("seed")
    shutil.copytree(model.train_dir, tmp_path / "train")
    return tmp_path / "train" / Path(model.prefix).name


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _check(result, copy: Path, before: dict, *phrases: str, code: int = 1) -> None:
    assert_clean_error(result, code, *phrases)
    assert _digest(copy.parent) == before
    assert sorted(p.name for p in copy.parent.parent.iterdir()) == ["train"]  # nothing written beside it


def test_truncated_data_shard(copy, slim_model):
    shard = next(copy.parent.glob(copy.name + ".data-*"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    before = _digest(copy.parent)
    _check(run_cli("recalibrate", copy, slim_model("seed").calib), copy, before, "checkpoint")


def test_corrupted_index(copy, slim_model):
    index = Path(str(copy) + ".index")
    index.write_bytes(b"\x00garbage" * 10)
    before = _digest(copy.parent)
    _check(run_cli("recalibrate", copy, slim_model("seed").calib), copy, before, "cannot read checkpoint")


def test_meta_that_does_not_match(copy, slim_model):
    other = slim_model("dense")
    before = _digest(copy.parent)
    result = run_cli("recalibrate", copy, slim_model("seed").calib, "--meta", other.prefix + ".meta")
    _check(result, copy, before, "--meta")


@pytest.mark.parametrize(
    "options, phrase",
    [
        (["--include", "("], "not a valid regular expression"),
        (["--training-flag", "nope"], "--training-flag nope: no such tensor"),
    ],
)
def test_bad_options(copy, slim_model, options, phrase):
    before = _digest(copy.parent)
    options = [o.format(copy=copy) for o in options]
    # a bad option value is a usage error, exit 2, as typer's own (one rule for bad option values)
    code = 1 if options[0] == "--training-flag" else 2
    _check(run_cli("recalibrate", copy, slim_model("seed").calib, *options), copy, before, phrase, code=code)


def test_output_inside_the_input_folder(copy, slim_model):
    before = _digest(copy.parent)
    result = run_cli("recalibrate", copy, slim_model("seed").calib, "-o", copy.parent / "fixed")
    _check(result, copy, before, "-o/--output")


def test_output_that_cannot_be_created(copy, slim_model, tmp_path_factory):
    blocker = tmp_path_factory.mktemp("elsewhere") / "a-file"
    blocker.write_text("not a folder")
    before = _digest(copy.parent)
    result = run_cli("recalibrate", copy, slim_model("seed").calib, "-o", blocker / "out")
    _check(result, copy, before, "is not a folder")
