"""The guards import TensorFlow and Keras only when one is named: ``import ckptfix`` and ``import ckptfix.guard``
stay as light as before (a fresh interpreter, since this one has imported TensorFlow); the import lines the docs
give exist."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CODE = """
import sys
import ckptfix, ckptfix.guard
light = sorted(m for m in ("tensorflow", "keras", "tf_keras", "numpy") if m in sys.modules)
from ckptfix.guard import BatchNormGuard
keras_side = sorted(m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules)
print(light, keras_side)
"""


@pytest.mark.subprocess
def test_importing_ckptfix_and_its_guards_imports_no_tensorflow():
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]"]  # BatchNormGuard itself imports Keras only when it reads a model


@pytest.mark.parametrize("doc", ["README.md", "docs/user-guide.md"])
def test_the_prevent_it_sections_import_names_that_exist(doc):
    """The lines the docs tell users to add import what they name (run in this process: TF is loaded anyway)."""
    text = (ROOT / doc).read_text()
    lines = {line.split("#")[0].strip() for block in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
             for line in block.splitlines() if line.strip().startswith("from ckptfix.guard import")}
    assert len(lines) >= 2
    for line in lines:
        exec(line, {})
