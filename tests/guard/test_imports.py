"""The guards import TensorFlow and Keras only when one is named: ``import ckptfix`` and ``import ckptfix.guard``
stay as light as before (a fresh interpreter, since this one has imported TensorFlow)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess

CODE = """
import sys
import ckptfix, ckptfix.guard
light = sorted(m for m in ("tensorflow", "keras", "tf_keras", "numpy") if m in sys.modules)
from ckptfix.guard import BatchNormGuard
keras_side = sorted(m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules)
print(light, keras_side)
"""


def test_importing_ckptfix_and_its_guards_imports_no_tensorflow():
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]"]  # BatchNormGuard itself imports Keras only when it reads a model
