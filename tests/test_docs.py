"""The documentation tells what the code does: every exit code in the tables, every option in the user guide
written as --help writes it, packaging metadata in its current form."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import typer

from ckptfix import errors
from ckptfix.cli.app import STALE_EXIT_CODE, app

ROOT = Path(__file__).parents[1]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def exit_codes() -> set[int]:
    """Every code the CLI exits with: success, each user error's, usage (2), stale (3), interrupted (130),
    terminated (SIGTERM: 143)."""
    from ckptfix.interrupts import Terminated

    return {0, 2, STALE_EXIT_CODE, 130, Terminated.exit_code, errors.CkptfixError.exit_code,
            *(cls.exit_code for cls in _subclasses(errors.CkptfixError))}


def _table_codes(markdown: str, heading: str) -> set[int]:
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    return {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)}


@pytest.mark.parametrize("doc", ["README.md", "docs/user-guide.md"])
def test_the_exit_code_tables_list_every_code(doc):
    assert _table_codes((ROOT / doc).read_text(), "## Exit codes") == exit_codes()


def test_the_cli_module_lists_every_exit_code():
    from ckptfix.cli import app as cli

    text = " ".join(cli.__doc__.split("Exit codes", 1)[1].split())
    assert {int(code) for code in re.findall(r"(?:[:;]) (\d+) ", text)} == exit_codes()


def test_the_error_section_names_the_codes_it_does_not_use():
    """'Every problem below exits with code 1 (4 for ...)' while the table holds bad option values (2)."""
    guide = (ROOT / "docs/user-guide.md").read_text()
    intro = guide.split("## Errors: what each bad input gets", 1)[1].split("|", 1)[0]
    assert all(f"{code}" in intro for code in (1, 2, 4, 5))


def test_the_user_guide_writes_each_option_as_help_does():
    """The user guide's option table had --devices' default and --image-size's form unlike --help."""
    from ckptfix.cli.app import _help_record

    command = typer.main.get_command(app).commands["recalibrate"]
    context = command.make_context("recalibrate", ["a", "b"])
    shown = {_help_record(param, context)[0] for param in command.params if param.param_type_name == "option"}
    guide = (ROOT / "docs/user-guide.md").read_text()
    table = guide.split("| option | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = [re.findall(r"`([^`]+)`", row.split(" | ")[0]) for row in table.splitlines()[2:]]
    for names in rows:
        for name in names:
            name = name.replace("\\|", "|")
            assert name in shown or any(name == part for row in shown for part in row.split(" / ")), name


def test_the_docs_cite_no_issue_numbers():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert not re.search(r"\bissues? \d+", doc.read_text()), doc.name


def test_the_license_is_an_spdx_string():
    """license = { text = ... } made setuptools print a deprecation warning three times during make demo."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77
               for r in project["build-system"]["requires"])


def test_the_api_section_lists_every_error_with_its_exit_code():
    """DataError, CheckpointError, OutputError, NoBatchNormError were raised by the API and documented nowhere."""
    import ckptfix.scaling.cluster  # noqa: F401  (defines WorkerError)

    guide = (ROOT / "docs/user-guide.md").read_text()
    table = guide.split("**Errors and exit codes.**", 1)[1].split("\n\n", 2)[1]
    rows = {re.match(r"\| `(\w+)`", row).group(1): int(row.rstrip(" |").rsplit("| ", 1)[1])
            for row in table.splitlines()[2:]}
    classes = {errors.CkptfixError, *_subclasses(errors.CkptfixError)}
    assert rows == {cls.__name__: cls.exit_code for cls in classes}
