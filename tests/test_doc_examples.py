"""Every example output in the docs is what a fresh run prints, within the tolerances other CPUs need
(tools/doc_examples.py: the runs, the comparison and the tolerances, stated there)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import forked

ROOT = Path(__file__).parents[1]
_SPEC = importlib.util.spec_from_file_location("doc_examples", ROOT / "tools" / "doc_examples.py")
doc_examples = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(doc_examples)


def _forked(args: list[str], cwd: Path, env: dict):
    return forked.run([sys.executable, *args], cwd=cwd, env=env, timeout=900)


@pytest.mark.subprocess
def test_every_documented_example_is_what_a_fresh_run_prints(tmp_path):
    fresh = doc_examples.generate(tmp_path, run=_forked)
    documented = doc_examples.documented()
    assert set(documented) == set(fresh)
    problems = {name: doc_examples.differences(documented[name][1], text) for name, text in fresh.items()}
    assert not {name: found for name, found in problems.items() if found}, (
        "run .venv/bin/python tools/doc_examples.py to regenerate the docs' examples")


def test_the_comparison_takes_other_cpus_rounding_and_catches_a_changed_output():
    documented = "conv1  +0 -> -0.0776   1 -> 0.08029  4.19σ\nagrees on 27% of 256 samples (error 6.09 -> 0.244)\n"
    # another CPU: last digits, a sample's top-1, column widths
    assert doc_examples.differences(
        documented, "conv1  +0 -> -0.07762  1 -> 0.0803   4.2σ\nagrees on 28% of 256 samples (error 6.1 -> 0.243)\n") == []
    # a changed estimate (3% off), a changed agreement (5 points), a changed wording
    assert doc_examples.differences(documented, documented.replace("0.08029", "0.0827"))
    assert doc_examples.differences(documented, documented.replace("27%", "32%"))
    assert doc_examples.differences(documented, documented.replace("agrees on", "agrees with"))
    assert doc_examples.differences(documented, documented + "one more line\n")


def test_every_marked_block_has_an_example_and_no_example_is_documented_twice():
    names = set(doc_examples.documented())
    assert names == {"demo", "recalibrate", "inspect", "diagnose", "agreement", "summary", "keras"}


def test_regenerating_replaces_only_the_blocks_contents(tmp_path):
    """Same texts: no file changes; a new text lands inside its block, the rest of the file as it was."""
    import shutil

    shutil.copy(ROOT / "README.md", tmp_path)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    known = {name: text for name, (_, text) in doc_examples.documented(tmp_path).items()}
    assert doc_examples.rewrite(known, tmp_path) == []
    before = (tmp_path / "docs" / "diagnostics.md").read_text()
    assert doc_examples.rewrite({**known, "inspect": "$ ckptfix inspect x\nnew\n"}, tmp_path) == [
        tmp_path / "docs" / "diagnostics.md"]
    after = (tmp_path / "docs" / "diagnostics.md").read_text()
    assert doc_examples.documented(tmp_path)["inspect"][1] == "$ ckptfix inspect x\nnew\n"
    assert after.replace("$ ckptfix inspect x\nnew\n", known["inspect"]) == before
