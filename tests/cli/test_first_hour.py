"""A newcomer's first hour: the commands the demo and the README suggest, typed in order in a fresh folder, and
what the first runs print (real subprocesses of the CLI on the demo's real checkpoint and images)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.test_errors import assert_clean_error, run_cli
from ckptfix.cli.app import app

pytestmark = pytest.mark.subprocess  # CLI runs and fresh interpreters (make test-fast leaves them out)

ROOT = Path(__file__).parents[2]
DEMO = "ckptfix-demo"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """A fresh folder in which ``ckptfix demo`` ran (as ``make demo`` runs it), and what the demo printed."""
    folder = tmp_path_factory.mktemp("clone")
    result = run_cli("demo", "--no-progress", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder, result.stdout


def _blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, re.S | re.M)


def suggested_commands(demo_output: str) -> list[str]:
    """The ckptfix commands the demo, then the README, then the user guide suggest on the demo's files, in
    order, each once (README's transcript of the same commands is not a second request)."""
    commands = [line.strip() for line in demo_output.splitlines() if line.startswith("   ckptfix ")]
    for doc in ("README.md", "docs/user-guide.md"):
        for block in _blocks((ROOT / doc).read_text(), "bash"):
            for line in block.splitlines():
                command = line.split("#")[0].strip()
                if command.startswith("ckptfix ") and DEMO in command:
                    commands.append(command)
    return list(dict.fromkeys(commands))


def test_every_suggested_command_works_when_typed_in_order(demo):
    """Item 1: the demo's suggested recalibrate exited 1 (its output already existed); now the demo's own
    repair is elsewhere and each command does what it says (diagnose: exit 3, stale)."""
    folder, output = demo
    commands = suggested_commands(output)
    assert [c.split()[1] for c in commands[:3]] == ["inspect", "diagnose", "recalibrate"], commands
    assert any("--plot" in c for c in commands)  # the user guide's picture of the demo
    for command in commands:
        words = shlex.split(command)
        result = run_cli(*words[1:], cwd=folder)
        expected = 3 if words[1] == "diagnose" else 0
        assert result.returncode == expected, (command, result.stderr)
        assert "Traceback" not in result.stderr
        if words[1] == "inspect":  # item 3: the cause says what the graph shows, once
            assert "cause: unknown: the train op Adam exists, but the graph holds no op that updates" in result.stdout
            assert "cause: cause" not in result.stdout and "inference mode while training" not in result.stdout
            assert "look never updated (initial 0/1): check" in result.stdout  # no --against given, none named
        if words[1] == "recalibrate":  # item 8: a drift measure, not 100% for any change from 0
            header = result.stdout.splitlines()[0]
            assert "mean shift" in header and "log var ratio" in header and "Δmean" not in result.stdout.split("\n\n")[0]
            assert re.search(r"conv1/BatchNorm .* \d\.\d+σ", result.stdout)
            assert (folder / DEMO / "train-recalibrated" / "checkpoint").is_file()
        if "--plot" in words:  # item 6: side outputs are named
            for side in (words[words.index("--plot") + 1], words[words.index("--summary") + 1]):
                assert f"wrote {side}" in result.stderr and (folder / side).is_file()


def test_the_readme_python_snippet_runs_and_prints_the_path_on_its_own_line(demo):
    """Items 1 and 2: the snippet raised OutputError after the demo, and glued the path onto the table."""
    folder, _ = demo
    snippets = [block for block in _blocks((ROOT / "README.md").read_text(), "python") if "ckptfix.recalibrate" in block]
    assert len(snippets) == 1
    for _ in range(2):  # a second run too: the snippet says overwrite=True
        result = subprocess.run([sys.executable, "-c", snippets[0]], capture_output=True, text=True, cwd=folder,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[-1].startswith("repaired checkpoint: ") and lines[-1].endswith("model.ckpt-300")
        assert lines[-2].startswith("conv2/BatchNorm") and "model.ckpt" not in lines[-2]


def test_the_demo_suggests_overwrite_when_an_earlier_run_left_the_output(tmp_path):
    from ckptfix.demo import next_commands

    assert not next_commands(tmp_path)[-1].endswith("--overwrite")
    (tmp_path / "train-recalibrated").mkdir()
    assert next_commands(tmp_path)[-1].endswith("--overwrite")


def test_diagnose_suggests_the_repair_with_the_options_given(demo, tmp_path):
    """Item 10: '(256 samples)' beside a repair command that would use every sample."""
    folder, _ = demo
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["diagnose", str(folder / DEMO / "train"), str(folder / DEMO / "calibration-images"),
                                      "--num-samples", "256", "--no-shuffle", "--no-progress", "--report", str(report)])
    assert result.exit_code == 3, result.output
    verdict = [line for line in result.output.splitlines() if line.startswith("STALE")][0]
    assert "on 256 samples" in verdict
    assert verdict.endswith(f"repair with: ckptfix recalibrate {folder / DEMO / 'train'} "
                            f"{folder / DEMO / 'calibration-images'} --num-samples 256 --no-shuffle"), verdict
    assert f"wrote {report}" in result.output and json.loads(report.read_text())["num_samples"] == 256
    inspected = CliRunner().invoke(app, ["inspect", str(folder / DEMO / "train"), "--against", str(folder / DEMO / "train")])
    assert f"check with: ckptfix diagnose {folder / DEMO / 'train'} DATA --against {folder / DEMO / 'train'}" \
        in inspected.output
    assert "look never updated (initial 0/1 or identical to --against)" in inspected.output


def test_swapped_arguments_are_named(demo):
    """Item 9: the data folder given as CKPT got 'has no checkpoint state file'."""
    folder, _ = demo
    result = run_cli("recalibrate", f"{DEMO}/calibration-images", f"{DEMO}/train", cwd=folder)
    assert_clean_error(result, 1, "holds calibration data (images such as 00000.png)", "arguments look swapped")
    one = CliRunner().invoke(app, ["inspect", str(folder / DEMO / "calibration-images" / "00001.png")])
    assert one.exit_code == 1 and "arguments look swapped" in one.output


def _visible_lines(stderr: str) -> list[str]:
    """What a terminal shows of each stderr line: the text after its last carriage return that is not blank."""
    return [next((part for part in reversed(line.split("\r")) if part.strip()), "") for line in stderr.split("\n")]


def test_notices_get_their_own_line_above_the_progress_bar(demo, tmp_path):
    """Item 7: 'calibrating: 0%| ... notice: skipped ...' on one line."""
    folder, _ = demo
    data = tmp_path / "mixed"
    data.mkdir()
    for png in sorted((folder / DEMO / "calibration-images").glob("*.png"))[:96]:
        shutil.copy(png, data / png.name)
    (data / "00050x.png").write_text("not an image")
    result = run_cli("diagnose", f"{DEMO}/train", data, "--batch-size", "16", "--progress", cwd=folder)
    assert result.returncode == 3, result.stderr
    notices = [line for line in _visible_lines(result.stderr) if "notice:" in line]
    assert any("skipped" in line for line in notices)
    assert all(line.startswith("notice: ") for line in notices), notices


def test_when_every_file_is_skipped_the_one_error_says_it(demo, tmp_path):
    """Item 7: a notice per skipped file repeated what the one error says."""
    folder, _ = demo
    (tmp_path / "a.png").write_text("not an image")
    (tmp_path / "b.png").write_text("nor this")
    result = CliRunner().invoke(app, ["diagnose", str(folder / DEMO / "train"), str(tmp_path), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "all 2 file(s) were skipped" in result.stderr and f"first: {tmp_path / 'a.png'}: " in result.stderr
    assert "notice: skipped" not in result.stderr
