"""The supported TensorFlow range: declared once (pyproject.toml), the same in the code (:mod:`ckptfix.compat`) and
in what CI installs (requirements/), judged the same way by the CLI and the API, and installing ckptfix into an
environment inside it changes nothing of its TensorFlow, Keras or numpy. Runs on both ends of the range
(``make test-oldest`` runs this file too)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import forked
from ckptfix import compat
from ckptfix.errors import TensorFlowVersionError

ROOT = Path(__file__).parent.parent


def _pins(name: str) -> dict[str, str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_the_declared_range_is_the_tested_range():
    """pyproject's requirement, the code's range and the TensorFlow pins of make test / make test-oldest agree."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (declared,) = [spec for spec in project["dependencies"] if spec.startswith("tensorflow")]
    assert declared == compat.REQUIREMENT == "tensorflow>=2.15,<2.22"
    low, high = re.fullmatch(r"tensorflow>=(\d+\.\d+),<(\d+\.\d+)", declared).groups()
    assert compat.SUPPORTED[0] == compat.minor_version(low) == compat.minor_version(_pins("oldest.txt")["tensorflow"])
    newest = compat.minor_version(_pins("newest.txt")["tensorflow"])
    assert compat.SUPPORTED[1] == newest and compat.minor_version(high) == (newest[0], newest[1] + 1)
    # tf-keras at the newest TensorFlow's own minor version; none beside TensorFlow 2.15 (compat.py says why)
    pins = _pins("newest.txt")
    assert compat.minor_version(pins["tf-keras"]) == compat.minor_version(pins["tensorflow"])
    assert "tf-keras" not in _pins("oldest.txt")


def test_this_environment_is_inside_the_range():
    compat.require_supported_tensorflow()
    assert compat.SUPPORTED[0] <= compat.minor_version(tf.__version__) <= compat.SUPPORTED[1]


@pytest.mark.parametrize("version, numpy", [("2.15.0", "1.26.4"), ("2.15.1", "1.26.4"), ("2.18.1", "2.0.2"),
                                            ("2.21.0", "2.4.6"), ("2.21.0rc1", "1.26.4")])
def test_versions_inside_the_range_pass_silently(version, numpy):
    assert compat.check_versions(version, numpy) is None


@pytest.mark.parametrize("version", ["2.14.1", "2.13.0", "1.15.5", "2.9.0rc2"])
def test_an_older_tensorflow_is_refused_in_one_line_naming_the_range(version):
    with pytest.raises(TensorFlowVersionError) as error:
        compat.check_versions(version, "1.26.4")
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert f"TensorFlow {version}" in message and "TensorFlow 2.15 to 2.21" in message
    assert "pip install 'tensorflow>=2.15,<2.22'" in message


def test_tensorflow_2_15_with_numpy_2_is_refused_and_2_16_is_not():
    """TensorFlow 2.15's wheels are built against numpy 1: its import fails under numpy 2 (2.16 and later run)."""
    with pytest.raises(TensorFlowVersionError, match=r"TensorFlow 2\.15\.1 needs numpy < 2.*numpy 2\.1\.0: pip install 'numpy<2'"):
        compat.check_versions("2.15.1", "2.1.0")
    assert compat.check_versions("2.16.1", "2.1.0") is None


@pytest.mark.parametrize("version", ["2.22.0", "2.22.0-dev20261201", "3.0.0"])
def test_a_newer_tensorflow_is_warned_about_and_runs(version):
    warning = compat.check_versions(version, "2.4.6")
    assert warning is not None and len(warning.splitlines()) == 1
    assert f"TensorFlow {version} is newer" in warning and "TensorFlow 2.15 to 2.21" in warning


def test_keras_flavours_are_this_tensorflows():
    """Keras 2 is tf.keras itself on TensorFlow 2.15 and the tf_keras package later; Keras 3 exists from 2.16."""
    import keras

    if compat.minor_version(tf.__version__) < (2, 16):
        assert not compat.has_keras3() and compat.keras2_name() == "keras" and keras.__version__.startswith("2.")
        assert compat.is_keras2_class(tf.keras.layers.BatchNormalization)
    else:
        import tf_keras

        assert compat.has_keras3() and compat.keras2() is tf_keras and keras.__version__.startswith("3.")
        assert compat.is_keras3_class(keras.layers.BatchNormalization)
        assert compat.is_keras2_class(tf_keras.layers.BatchNormalization)
        assert not compat.is_keras2_class(keras.layers.BatchNormalization)


# A process whose TensorFlow reports another version: the real TensorFlow, imported, then its ``__version__`` set
# before ckptfix runs (the check reads it, as it would read an older or newer release's).
_AS_VERSION = """
import sys
import tensorflow as tf
tf.__version__ = sys.argv[1]
if sys.argv[2] == "api":
    import ckptfix
    try:
        ckptfix.inspect(sys.argv[3])
    except ckptfix.CkptfixError as error:
        print(type(error).__name__ + ": " + str(error))
        sys.exit(1)
else:
    from ckptfix.cli.app import main
    sys.argv = ["ckptfix", *sys.argv[2:]]
    main()
"""


def _as_version(version: str, *args: str) -> subprocess.CompletedProcess:
    return forked.run([sys.executable, "-c", _AS_VERSION, version, *map(str, args)], timeout=300)


@pytest.mark.subprocess
def test_cli_on_an_older_tensorflow_says_the_range_in_one_line(tmp_path):
    done = _as_version("2.14.1", "inspect", tmp_path / "model.ckpt-1")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: ckptfix supports TensorFlow 2.15 to 2.21; this environment has TensorFlow 2.14.1: "
        "pip install 'tensorflow>=2.15,<2.22'."], done.stderr
    assert done.stdout == ""


@pytest.mark.subprocess
def test_api_on_an_older_tensorflow_raises_the_same_line(tmp_path):
    done = _as_version("2.14.1", "api", tmp_path / "model.ckpt-1")
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip() == ("TensorFlowVersionError: ckptfix supports TensorFlow 2.15 to 2.21; this environment "
                                   "has TensorFlow 2.14.1: pip install 'tensorflow>=2.15,<2.22'.")
    assert "Traceback" not in done.stderr


@pytest.mark.subprocess
def test_cli_on_a_newer_tensorflow_warns_once_then_runs(tmp_path):
    """The warning is the first line; the command then runs as usual (here: its error for a missing checkpoint)."""
    done = _as_version("2.22.0", "inspect", tmp_path / "model.ckpt-1")
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("warning: TensorFlow 2.22.0 is newer than the versions ckptfix is tested on "
                               "(TensorFlow 2.15 to 2.21)"), done.stderr
    assert len(lines) == 2 and lines[1].startswith("error: no checkpoint at"), done.stderr
    assert done.returncode == 1


@pytest.mark.subprocess
def test_installing_ckptfix_keeps_this_environments_tensorflow_keras_and_numpy():
    """``pip install .`` resolved against this environment (TensorFlow 2.15 in make test-oldest, the newest in make
    test) installs ckptfix alone: pip's own installation report, nothing installed (``--dry-run``)."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    installed = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                 for item in json.loads(done.stdout)["install"]}
    assert list(installed) == ["ckptfix"], installed


def test_long_rows_of_ones_get_constants_of_their_own_length():
    """The accurate sums share constants by value; numpy 1's ``repr`` of a long row of ones is the same for every
    length (``array([[1., 1., 1., ..., 1., 1., 1.]], dtype=float32)``, numpy 2 adds the shape), which made every BN
    input of a published model multiply by the first one's row (a shape error under TensorFlow 2.15)."""
    from ckptfix.graph.sums import SharedConstants

    constants = SharedConstants()
    with tf.Graph().as_default():
        rows = [constants.get_constant(np.ones((1, k), np.float32), tf.float32) for k in (17952, 11033, 17952)]
    assert [row.shape.as_list() for row in rows] == [[1, 17952], [1, 11033], [1, 17952]]
    assert rows[0] is rows[2]
