"""Run the catalogue: each case's truth (truth.py), then the tool on the same data WITHOUT force, and the
confusion matrices of the tool's decisions against the truth.

What the tool should do, from the truth:

    verdict truth   diagnose                                  gate truth   recalibrate (no force)
    needs-repair    stale (exit 3)                            write        writes (exit 0)
    healthy         fresh or differs (exit 0)                 refuse       RepairRefused (exit 5), nothing written
    no-verdict      inconclusive (exit 5)

Run from the repository root: ``python benchmarks/decision_catalogue.py [--markdown]`` (or from tests/:
``python -m decisions.catalogue``): rebuilds every model and prints the matrices (and, with --markdown, the
tables of docs/decisions.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ckptfix.errors import CkptfixError
from decisions import subjects
from decisions.cases import CASES, Case, cli_flags
from decisions.subjects import ORACLE_SEED, HeldOut, Subject
from decisions.truth import GATES, ORACLE_SAMPLES, VERDICTS, Truth, label

#: options that state what the user wants rather than how to measure (not given to the forced measurement run)
INTENT_OPTIONS = ("adapt",)
#: what diagnose should answer for each verdict truth
EXPECTED_VERDICTS = {"needs-repair": ("stale",), "healthy": ("fresh", "differs"), "no-verdict": ("inconclusive",)}
TOOL_VERDICTS = ("stale", "fresh", "differs", "inconclusive", "error")
TOOL_GATES = ("write", "refuse", "error")
#: diagnose's exit code of each verdict (cli/app.py); "error" has none
DIAGNOSE_EXITS = {"stale": 3, "inconclusive": 5, "fresh": 0, "differs": 0}


@dataclass(frozen=True)
class Result:
    """A case's truth and what the tool did: diagnose's verdict, recalibrate's ``write`` / ``refuse`` (``error``
    for anything else), the tool's messages, and the seconds the case took (truth included)."""

    case: Case
    truth: Truth
    verdict: str
    gate: str
    message: str
    seconds: float

    @property
    def verdict_ok(self) -> bool:
        return self.verdict in EXPECTED_VERDICTS[self.truth.verdict]

    @property
    def gate_ok(self) -> bool:
        return self.gate == self.truth.gate

    def explain(self) -> str:
        return (f"{self.case.name} ({self.case.what}): {self.truth.figures()}; truth {self.truth.verdict} / "
                f"{self.truth.gate} ({self.truth.why}); tool: diagnose {self.verdict}, recalibrate {self.gate}"
                + (f" -- {self.message}" if self.message else ""))


class Catalogue:
    """Builds subjects, held-out sets and oracles once each (lazily), and runs cases (each once).

    ``slim(variant)`` -> a built ``fixtures.runner.SlimModel`` (the ``slim_model`` fixture in the suite)."""

    def __init__(self, root: Path, slim: Callable[[str], object]):
        self.root = Path(root)
        self._slim = slim
        self._subjects: dict[str, Subject] = {}
        self._held_out: dict[str, HeldOut] = {}
        self._accuracy: dict[tuple, float] = {}
        self._results: dict[str, Result] = {}

    # --- subjects and their truth ----------------------------------------------------------------------

    def subject(self, name: str) -> Subject:
        if name not in self._subjects:
            if name.startswith("keras-"):
                self._subjects.update(subjects.build_keras_subjects(self.root / "keras"))
            elif name == "slim-seed":
                self._subjects[name] = subjects.slim_subject(name, self._slim("seed"))
            elif name == "slim-pretrained":
                self._subjects[name] = subjects.slim_subject(name, self._slim("nonfused_pretrained"))
            elif name == "slim-healthy":  # slim-seed repaired from 2,560 other samples: statistics of its domain
                seed = self.subject("slim-seed")
                data = seed.domain.sample(ORACLE_SAMPLES, ORACLE_SEED + 1)[0]
                report = self._forced_repair(seed, data, {"batch_size": 32}, name)
                self._subjects[name] = dataclasses.replace(seed, name=name, checkpoint=report.output_checkpoint)
            elif name == "demo":
                self._subjects[name] = subjects.demo_subject(self.root / "demo")
            else:
                raise KeyError(name)
        return self._subjects[name]

    def held_out(self, domain: subjects.Domain) -> HeldOut:
        if domain.name not in self._held_out:
            self._held_out[domain.name] = HeldOut.draw(domain, self._scratch(f"held-out-{domain.name}"))
        return self._held_out[domain.name]

    def accuracy(self, subject: Subject, domain: subjects.Domain, mode: str) -> float:
        """``mode``: ``inference`` / ``training`` of the subject as given, or ``oracle``."""
        key = (subject.name, domain.name, mode)
        if key not in self._accuracy:
            held_out = self.held_out(domain)
            if mode == "oracle":
                data = domain.sample(ORACLE_SAMPLES, ORACLE_SEED)[0]
                report = self._forced_repair(subject, data, {"batch_size": 32}, f"oracle-{subject.name}-{domain.name}")
                self._accuracy[key] = subject.accuracy(report.output_checkpoint, held_out, "inference")
            else:
                self._accuracy[key] = subject.accuracy(subject.checkpoint, held_out, mode)
        return self._accuracy[key]

    def _forced_repair(self, subject: Subject, data, options: dict, name: str):
        """The statistics ckptfix computes from ``data``, written with force=True: a measurement, not a test.
        Returns the report (``output_checkpoint``: what was written)."""
        import ckptfix

        return ckptfix.recalibrate(subject.checkpoint, data, output=self._output(subject, name), force=True,
                                   **subject.options, **options)

    def truth(self, case: Case, data) -> Truth:
        subject = self.subject(case.subject)
        domain = case.domain or subject.domain
        # force writes whatever the gate says: intent options (adapt) are left out, for tools without them too
        options = {name: value for name, value in case.options.items() if name not in INTENT_OPTIONS}
        used = ""
        try:
            report = self._forced_repair(subject, data, options, f"repair-{case.name}")
            acc_repair = subject.accuracy(report.output_checkpoint, self.held_out(domain), "inference")
            used = f"{report.num_samples} ({report.stop_reason})"
        except CkptfixError as error:  # the data cannot give statistics at all: no repair to measure
            acc_repair, used = math.nan, f"none: {error}"
        return label(self.accuracy(subject, domain, "inference"), acc_repair, self.accuracy(subject, domain, "oracle"),
                     self.accuracy(subject, domain, "training"), degenerate=case.degenerate,
                     frozen_trained=subject.frozen_trained, adapt=case.adapt, used=used)

    # --- the tool --------------------------------------------------------------------------------------

    def run(self, case: Case) -> Result:
        if case.name not in self._results:
            started = time.monotonic()
            folder = self._scratch(f"case-{case.name}")
            subject = self.subject(case.subject)
            data = case.data(case.domain or subject.domain, folder)
            truth = self.truth(case, data)
            verdict, gate, message = (self._cli if case.cli else self._api)(case, subject, data, folder)
            self._results[case.name] = Result(case, truth, verdict, gate, message, time.monotonic() - started)
        return self._results[case.name]

    def _api(self, case: Case, subject: Subject, data, folder: Path) -> tuple[str, str, str]:
        import ckptfix
        from ckptfix.errors import RepairRefused

        messages = []
        options = {**subject.options, **case.options}
        try:
            diagnosis = ckptfix.diagnose(subject.checkpoint, data, **options).to_dict()
            verdict = _coherent(diagnosis, messages)
        except Exception as error:  # noqa: BLE001 -- any other outcome is an off-diagonal "error"
            verdict = "error"
            messages.append(f"diagnose: {type(error).__name__}: {error}")
        output = self._output(subject, f"tool-{case.name}")
        try:
            ckptfix.recalibrate(subject.checkpoint, data, output=output, **options)
            gate = "write" if Path(output).exists() else "error"
        except RepairRefused as error:
            gate = "refuse" if not Path(output).exists() else "error"
            messages.append(f"recalibrate: {error}")
        except Exception as error:  # noqa: BLE001
            gate = "error"
            messages.append(f"recalibrate: {type(error).__name__}: {error}")
        return verdict, gate, " | ".join(messages)

    def _cli(self, case: Case, subject: Subject, data, folder: Path) -> tuple[str, str, str]:
        import numpy as np

        if not isinstance(data, Path):
            np.save(folder / "data.npy", data)
            data = folder / "data.npy"
        flags = cli_flags({**subject.options, **case.options})
        report = folder / "diagnosis.json"
        diagnosed = _ckptfix("diagnose", subject.checkpoint, data, *flags, "--report", report)
        messages = []
        verdict = _coherent(json.loads(report.read_text()), messages) if report.exists() else "error"
        if diagnosed.returncode != DIAGNOSE_EXITS.get(verdict):
            messages.append(f"diagnose: exit {diagnosed.returncode} ({verdict}): {diagnosed.stderr.strip()[-300:]}")
            verdict = "error"
        output = self._output(subject, f"tool-{case.name}")
        repaired = _ckptfix("recalibrate", subject.checkpoint, data, *flags, "-o", output)
        written = Path(output).exists()
        gate = {(0, True): "write", (5, False): "refuse"}.get((repaired.returncode, written), "error")
        if repaired.returncode != 0:
            messages.append(f"recalibrate: exit {repaired.returncode}: {repaired.stderr.strip()[-300:]}")
        if "ckptfix recalibrate" in diagnosed.stdout and gate != "write":  # diagnose recommended a refused command
            messages.append(f"diagnose recommended the repair that recalibrate refused: {diagnosed.stdout.strip()[-300:]}")
            gate = "error"
        return verdict, gate, " | ".join(messages)

    # --- scratch space ---------------------------------------------------------------------------------

    def _scratch(self, name: str) -> Path:
        folder = self.root / name.replace(" ", "_").replace(",", "")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _output(self, subject: Subject, name: str) -> str:
        """Where a run writes: a ``.keras`` file for Keras subjects, else a folder (neither exists yet)."""
        folder = self._scratch(name)
        return str(folder / ("out.keras" if subject.checkpoint.endswith(".keras") else "out"))


def _coherent(diagnosis: dict, messages: list[str]) -> str:
    """The diagnosis's verdict, or ``error`` when a layer's label contradicts it (a ``stale`` row under another
    verdict, a ``differs`` row under ``stale``)."""
    verdict, labels = diagnosis["verdict"], set(diagnosis["layer_labels"].values())
    if ("stale" in labels and verdict != "stale") or ("differs" in labels and verdict != "differs"):
        messages.append(f"diagnose: layer labels {sorted(labels)} under the verdict {verdict}")
        return "error"
    return verdict


def _ckptfix(*args):
    """``ckptfix ARGS`` in a process of its own (tests/forked.py, as the CLI tests run it)."""
    import forked

    return forked.run([sys.executable, "-m", "ckptfix", *map(str, args)], timeout=300)


# --- the matrices ---------------------------------------------------------------------------------------

def confusion(results: list[Result]) -> tuple[dict, dict]:
    """``(verdicts, gates)``: counts keyed ``(truth, tool)``, every row and column present."""
    verdicts = {(t, v): 0 for t in VERDICTS for v in TOOL_VERDICTS}
    gates = {(t, g): 0 for t in GATES for g in TOOL_GATES}
    for result in results:
        verdicts[result.truth.verdict, result.verdict] += 1
        gates[result.truth.gate, result.gate] += 1
    return verdicts, gates


def _matrix(title: str, counts: dict, rows, columns, expected) -> str:
    lines = [f"| {title} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [(f"**{counts[row, c]}**" if c in expected[row] else str(counts[row, c])) for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matrices(results: list[Result]) -> str:
    """Both confusion matrices as Markdown tables (rows: truth; columns: the tool; expected cells in bold)."""
    verdicts, gates = confusion(results)
    return "\n\n".join([
        _matrix("verdict truth \\ diagnose", verdicts, VERDICTS, TOOL_VERDICTS, EXPECTED_VERDICTS),
        _matrix("gate truth \\ recalibrate", gates, GATES, TOOL_GATES, {g: (g,) for g in GATES}),
    ])


def table(results: list[Result]) -> str:
    """One row per case: the truth figures and labels, and the tool's decisions (✗: off the diagonal)."""
    def pct(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.1%}"

    lines = ["| case | what | stored | repair (samples used) | oracle | training | truth | diagnose | gate truth "
             "| recalibrate |", "|---" * 10 + "|"]
    for r in results:
        t = r.truth
        used = t.used.split(":")[0]  # "none: <why>" -> "none"
        lines.append(f"| {r.case.name} | {r.case.what} | {pct(t.acc_stored)} | {pct(t.acc_repair)} ({used}) | "
                     f"{pct(t.acc_oracle)} | {pct(t.acc_training)} | {t.verdict} | "
                     f"{r.verdict}{'' if r.verdict_ok else ' ✗'} | {t.gate} | {r.gate}{'' if r.gate_ok else ' ✗'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the per-case table too")
    parser.add_argument("--case", action="append", help="run only these cases (repeatable)")
    args = parser.parse_args(argv)
    from fixtures import runner

    root = Path(tempfile.mkdtemp(prefix="ckptfix-decisions-"))
    try:
        catalogue = Catalogue(root, lambda variant: runner.build(variant, root / f"slim-{variant}"))
        started = time.monotonic()
        results = [catalogue.run(case) for case in CASES if not args.case or case.name in args.case]
        if args.markdown:
            print(table(results), end="\n\n")
        print(matrices(results))
        print(f"\n{len(results)} cases in {time.monotonic() - started:.0f} s")
        for result in results:
            if not (result.verdict_ok and result.gate_ok):
                print(f"off the diagonal: {result.explain()}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
