"""Issue 14 item 9: a folder of undecodable images names the first few skips and the count on the terminal;
the report keeps every one."""

import json
import os
import sys

import numpy as np
from data_helpers import open_batches, pixels, write_images

import forked

BAD = 8


def _write_bad(folder, count: int = BAD) -> list[str]:
    names = [f"zz_bad_{i}.png" for i in range(count)]
    for name in names:
        (folder / name).write_bytes(b"\x89PNG not really an image")
    return names


def test_warnings_name_three_skips_then_the_count(tmp_path):
    write_images(tmp_path, pixels(4), "png")
    names = _write_bad(tmp_path)
    warnings = []
    opened = open_batches(tmp_path, preprocess="raw", on_warning=warnings.append)
    assert len(np.concatenate(list(opened))) == 4
    assert [p.rsplit("/", 1)[-1] for p in opened.skipped_files] == names  # all of them, in order
    assert len(warnings) == 4, warnings
    assert all(names[i] in warnings[i] for i in range(3))
    assert "5 more" in warnings[3] and "8 in all" in warnings[3] and "skipped_files" in warnings[3]
    assert not any(names[5] in w for w in warnings)


def test_few_skips_are_all_named_with_no_summary(tmp_path):
    write_images(tmp_path, pixels(4), "png")
    names = _write_bad(tmp_path, 2)
    warnings = []
    list(open_batches(tmp_path, preprocess="raw", on_warning=warnings.append))
    assert len(warnings) == 2 and names[0] in warnings[0] and names[1] in warnings[1]


def test_cli_terminal_is_short_and_the_json_report_complete(slim_model, tmp_path):
    model = slim_model("seed")
    folder = tmp_path / "photos"
    folder.mkdir()
    for png in sorted(model.images_dir.glob("*.png"))[:32]:
        (folder / png.name).write_bytes(png.read_bytes())
    names = _write_bad(folder)
    report = tmp_path / "r.json"
    run = forked.run(
        [sys.executable, "-m", "ckptfix", "recalibrate", str(model.prefix), str(folder), "-o", str(tmp_path / "fixed"),
         "--no-progress", "--batch-size", "16", "--report", str(report)],
        env=dict(os.environ), timeout=300,
    )
    assert run.returncode == 0, run.stderr
    saved = json.loads(report.read_text())
    assert saved["samples_skipped"] == BAD
    skipped = saved["skipped_files"]  # in reading (shuffled) order
    assert sorted(p.rsplit("/", 1)[-1] for p in skipped) == names
    terminal = run.stdout + run.stderr
    assert all(f"skipped {path}" in terminal for path in skipped[:3]), terminal
    assert not any(path in terminal for path in skipped[3:]), terminal  # neither in notices nor the end-of-run line
    assert "skipped 5 more unreadable file(s) or record(s), 8 in all" in run.stderr
    end = next(line for line in run.stdout.splitlines() if "unreadable file(s) or record(s) skipped" in line)
    assert end == f"{BAD} unreadable file(s) or record(s) skipped: {', '.join(skipped[:3])} and 5 more", end
