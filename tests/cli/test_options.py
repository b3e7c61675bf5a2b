"""The CLI's typed options: choices listed in --help and refused as usage errors (exit 2) in real subprocesses,
the help grouped into panels that fit an 80-column terminal, and --all / --truncate on a model with more BN
layers than a truncated table shows."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ckptfix.cli.app import app
from ckptfix.report import DEFAULT_ROWS
import forked

PANELS = ("Model", "Data", "Statistics", "Output", "Safety")


def run_cli(*args, columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns)}
    return forked.run([sys.executable, "-m", "ckptfix", *map(str, args)], env=env, timeout=300)


def _text(output: str) -> str:
    """Rich's boxed output as plain words: frame characters dropped, whitespace collapsed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.mark.parametrize("option, value, choices", [
    ("--estimator", "median", ["pooled", "batch-mean"]),
    ("--model-format", "onnx", ["keras", "h5", "weights-h5", "tf-checkpoint", "savedmodel", "tf1"]),
    ("--format", "csv", ["images", "numpy", "tfrecord"]),
    ("--preprocess", "imagenet", ["inception", "vgg", "caffe", "torch", "unit", "raw", "package.module:function"]),
])
@pytest.mark.subprocess
@pytest.mark.parametrize("command", ["recalibrate", "diagnose"])
def test_a_bad_choice_is_a_usage_error_naming_the_choices(tmp_path, command, option, value, choices):
    result = run_cli(command, tmp_path / "model.ckpt-1", tmp_path / "data.npy", option, value)
    assert result.returncode == 2, result.stderr
    message = _text(result.stderr)
    assert message.startswith(f"error: {option} must be ") and f"(got {value})" in message  # no validation-library prefix
    assert all(choice in message for choice in choices), message
    assert "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_module_function_is_accepted_by_preprocess(tmp_path):
    """A value with ':' passes the usage check (it is resolved later, as user code)."""
    result = run_cli("recalibrate", tmp_path / "model.ckpt-1", tmp_path / "data.npy", "--preprocess", "my_prep:fn")
    assert result.returncode == 1 and "no checkpoint at" in result.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("command", ["recalibrate", "diagnose", "inspect"])
def test_help_reads_like_pip_within_80_columns(command):
    """Plain text in sections (no boxes, no markup eating '[plot]'), plain metavars, choices listed, flags
    without a type, the descriptions given room at 80 columns."""
    result = run_cli(command, "-h", columns=80)
    assert result.returncode == 0, result.stderr
    assert run_cli(command, "--help", columns=80).stdout == result.stdout
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    arguments = "CKPT" if command == "inspect" else "CKPT DATA"
    assert re.fullmatch(f"Usage: (python -m )?ckptfix {command} \\[OPTIONS\\] {arguments}", lines[0]), lines[0]
    sections = [line[:-1] for line in lines if line.endswith(":") and not line.startswith(" ")]
    panels = [f"{name} options" for name in PANELS if command != "inspect" or name != "Data"]
    assert sections == ["Arguments", "Options", *panels]
    assert not re.search(r"[│╭╮╰╯]|<(bool|int|float|str|path|text)>", result.stdout)  # no boxes, no <bool>/<int>/<path> types
    rows = [line for line in lines if line.startswith("  -")]
    flags = {"--overwrite", "--force", "--strict", "--json", "--unsafe", "--allow-unsafe-ops", "-v, --verbose"}
    for row in rows:
        name = row.split("  ")[1].strip()
        if name in flags or " / " in name:
            assert not re.search(r"[A-Z]", name.replace("-h, --help", "")), row  # a flag takes no value
    # every description starts in one column and gets at least 40 characters
    assert min(80 - len(line) + len(line.lstrip()) for line in lines if line.startswith("  -")) >= 0
    starts = {len(row) - len(row.split("  ", 2)[-1].lstrip()) for row in rows if "   " in row.strip()}
    assert max(starts) <= 40, starts
    text = " ".join(result.stdout.split())
    assert "keras, h5, weights-h5, tf-checkpoint, savedmodel or tf1" in text
    assert "--meta PATH" in text and "--model MODULE:FN" in text
    if command != "inspect":
        assert "--estimator pooled|batch-mean" in text and "--batch-size N" in text
        assert "images, numpy or tfrecord" in text
        assert "inception, vgg, caffe, torch, unit, raw" in text
        assert "--all / --truncate" in text and "--shuffle / --no-shuffle" in text
        assert "pip install 'ckptfix[plot]'" in text


@pytest.mark.subprocess
def test_version_and_top_level_help():
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ckptfix {version('ckptfix')}"
    listing = run_cli("-h", columns=80)
    assert listing.returncode == 0 and "--version" in listing.stdout
    assert "ckptfix [OPTIONS] COMMAND [ARGS]..." in listing.stdout
    assert "write a new checkpoint" in " ".join(listing.stdout.split())  # command summaries are not cut


@pytest.fixture(scope="module")
def deep_keras(tmp_path_factory):
    """A Keras 3 model with more BN layers than a truncated table shows, and calibration data for it."""
    import keras

    folder = tmp_path_factory.mktemp("deep")
    keras.utils.set_random_seed(0)
    layers = [keras.Input((4,))]
    for k in range(DEFAULT_ROWS + 3):
        layers += [keras.layers.Dense(4, name=f"dense{k:02d}"), keras.layers.BatchNormalization(name=f"bn{k:02d}")]
    model = keras.Sequential(layers)
    model.save(folder / "deep.keras")
    np.save(folder / "calib.npy", np.random.default_rng(0).normal(size=(512, 4)).astype(np.float32))
    return folder / "deep.keras", folder / "calib.npy", [f"bn{k:02d}" for k in range(DEFAULT_ROWS + 3)]


def _shown(output: str, names: list[str]) -> list[str]:
    return [name for name in names if re.search(rf"^\S*{name}\b", output, re.M)]


@pytest.mark.parametrize("command, default_all", [("recalibrate", True), ("diagnose", False), ("inspect", False)])
def test_all_shows_every_layer_and_truncate_the_first_ones(deep_keras, tmp_path, command, default_all):
    model, calib, names = deep_keras

    def table(*flags: str) -> str:
        data = [] if command == "inspect" else [str(calib)]
        output = ["-o", str(tmp_path / f"out{''.join(flags)}.keras")] if command == "recalibrate" else []
        quiet = [] if command == "inspect" else ["--no-progress"]
        result = CliRunner().invoke(app, [command, str(model), *data, *output, *quiet, *flags])
        assert result.exit_code in (0, 3), result.output
        return result.output

    assert _shown(table("--all"), names) == names  # before the fix, recalibrate's --all truncated
    truncated = table("--truncate")
    assert len(_shown(truncated, names)) == DEFAULT_ROWS and "--all shows every one" in truncated
    default = table()
    assert len(_shown(default, names)) == (len(names) if default_all else DEFAULT_ROWS)


def test_keras_input_in_the_list_and_comma_forms(deep_keras):
    """The CLI passes --input as a list: a one-input Keras model takes one name (its data key), not two."""
    model, calib, _ = deep_keras
    result = CliRunner().invoke(app, ["diagnose", str(model), str(calib), "--input", "pixels", "--json", "--no-progress"])
    assert result.exit_code in (0, 3), result.output
    assert '"input_tensor": "pixels"' in result.output
    two = CliRunner().invoke(app, ["diagnose", str(model), str(calib), "--input", "a,b", "--no-progress"])
    assert two.exit_code == 1 and "--input names 2 input(s), but the model has 1" in two.output, two.output


@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", "abc", "error: --batch-size must be a whole number (got abc)."),
    ("--central-crop", "x", "error: --central-crop must be a number (got x)."),
])
def test_a_value_of_the_wrong_type_is_one_line_in_the_common_form(tmp_path, option, value, message):
    """'Input should be a valid integer, unable to parse string as an integer' was the validation library's."""
    result = run_cli("diagnose", tmp_path / "model.ckpt-1", tmp_path / "data.npy", option, value)
    assert result.returncode == 2 and result.stderr.splitlines()[0] == message, result.stderr


@pytest.mark.subprocess
def test_the_help_option_reads_the_same_whatever_the_string_hashing():
    """'-h, --help' and '--help, -h' alternated between identical runs (click builds it from a set)."""
    code = "import sys; from ckptfix.cli.app import app; sys.argv = ['ckptfix', *sys.argv[1:]]; app()"
    for seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        for args in (["inspect", "--help"], ["--help"]):
            shown = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                                   timeout=120).stdout
            assert "  -h, --help " in shown and "--help, -h" not in shown, (seed, args)


@pytest.mark.subprocess
@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "error: --batch-size must be at least 1 (got 0)."),
    (["--num-samples", "0"], "error: --num-samples must be at least 1 (got 0)."),
    (["--until-stable", "-1"], "error: --until-stable must be between 0 and 1, e.g. 0.01 (got -1.0)."),
    (["--bogus"], "error: No such option: --bogus"),
    (["--batchsize", "3"], "error: No such option: --batchsize (Possible options: --batch-size)"),
])
def test_every_bad_option_value_is_one_line_and_the_help_line(tmp_path, args, message):
    """Out-of-range values dropped the help line other bad values print; --bogus was offered --verbose."""
    result = run_cli("diagnose", tmp_path / "model.ckpt-1", tmp_path / "data.npy", *args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == message and re.fullmatch(r"see '(python -m )?ckptfix diagnose --help'\.", lines[1]), lines
