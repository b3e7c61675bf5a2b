"""markdown_summary renders as a Markdown table: header, separator, one row per layer, then the facts."""

from ckptfix.render.summary import markdown_summary
from render.reports import synthetic_report


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").replace("\\|", "\x00").split("|")] for line in rows]


def test_one_row_per_layer_under_a_header_and_separator():
    report = synthetic_report(150)
    text = markdown_summary(report)
    rows = table_rows(text)
    header, separator, body = rows[0], rows[1], rows[2:]
    assert header[1] == "BN layer" and all(set(cell) <= set("-:") and cell for cell in separator)
    assert len(separator) == len(header) and all(len(row) == len(header) for row in body)
    assert len(body) == 150
    assert [row[1].replace("\x00", "|") for row in body] == [layer["name"] for layer in report["layers"]]
    stale = [row[-1] == "**stale**" for row in body]
    assert stale == [layer["drift"]["verdict"] == "stale" for layer in report["layers"]]
    assert "25% -> 99%" in text and "stale (100 of 150 BN layers)" in text


def test_a_real_diagnosis_with_its_cause(real_report):
    cause = {"code": "update-ops-not-run", "message": "cause: the train op Adam never runs the 4 BN update ops",
             "train_op": "Adam", "update_ops": [], "evidence": []}
    text = markdown_summary({**real_report, "cause": cause})
    body = table_rows(text)[2:]
    assert [row[1] for row in body] == [layer["name"] for layer in real_report["layers"]]
    assert float(body[0][3]) == float(f"{real_report['layers'][0]['drift']['mean_shift']:.3g}")
    assert "**Cause** (`update-ops-not-run`)" in text
    assert "Cause" not in markdown_summary({**real_report, "cause": None})


def test_a_recalibration_report_says_what_was_repaired():
    text = markdown_summary({**synthetic_report(5, kind="recalibration"), "output_checkpoint": "fixed/model.ckpt"})
    assert text.startswith("### ckptfix recalibration: 5 BN layers, 3 were stale")
    assert "-> `fixed/model.ckpt`" in text and len(table_rows(text)) == 2 + 5
