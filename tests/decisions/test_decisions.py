"""The decision catalogue: on every case, diagnose's verdict and recalibrate's write-or-refuse (run
without force) against truth measured on held-out data (decisions/truth.py). One test per case, so a failure
names it; the summary prints both confusion matrices (``pytest -s`` or ``-rA``) and writes them to
``build/decisions/confusion.md`` (git-ignored) in the repository."""

from __future__ import annotations

import pytest

from pathlib import Path

from decisions.cases import CASES
from decisions.catalogue import matrices, table

CASE_NAMES = [case.name for case in CASES]
CONFUSION = Path(__file__).resolve().parents[2] / "build" / "decisions" / "confusion.md"


@pytest.mark.parametrize("case", CASES, ids=CASE_NAMES)
def test_diagnose_verdict(catalogue, case):
    result = catalogue.run(case)
    assert result.verdict_ok, result.explain()


@pytest.mark.parametrize("case", CASES, ids=CASE_NAMES)
def test_repair_gate(catalogue, case):
    result = catalogue.run(case)
    assert result.gate_ok, result.explain()


def test_confusion_matrices(catalogue):
    """Both matrices printed and written; the catalogue tests each decision in both directions."""
    results = [catalogue.run(case) for case in CASES]
    text = table(results) + "\n\n" + matrices(results)
    CONFUSION.parent.mkdir(parents=True, exist_ok=True)
    CONFUSION.write_text(text + "\n")
    print(f"\n{text}\n\n(written to {CONFUSION})")
    assert len(CASE_NAMES) == len(set(CASE_NAMES)) >= 24
    assert {r.truth.verdict for r in results} == {"needs-repair", "healthy", "no-verdict"}
    assert {r.truth.gate for r in results} == {"write", "refuse"}
