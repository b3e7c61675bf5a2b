"""Benchmark -- the whole ``ckptfix.recalibrate`` call against what a user's own eval script does at least.

A stale tf-slim Inception-v3 training checkpoint (94 BN layers, no auxiliary logits, random weights, moving
statistics 0 / 1, the whole training graph with Momentum slots in its .meta; ``_models.build_stale``) is built
in a temp folder; the same calibration batches then go through, alternately (ABBA) in one process:

* the eval script: import the .meta, restore with its saver, one ``session.run(logits)`` per batch
  (``_models.forward_baseline``; training-mode BN, as the saved graph is);
* ckptfix: ``ckptfix.recalibrate(prefix, batches, output=...)`` with default options -- the output-agreement
  check on (256 samples) -- the batches given as an iterable (same order, no shuffling), output folder removed
  before each run.

The API call is timed as a whole; its streaming part runs from the first batch it pulls to the end of the
first TensorFlow call that received the last batch (``Session.run`` / ``make_callable`` wrapped with a clock: public TF
entry points, so the figure survives a refactor of ckptfix). One more API run under cProfile attributes the
rest to phases by function-name patterns (``PHASES``); a pattern matching nothing prints "not found".
cProfile slows Python-heavy phases (graph analysis), so its seconds are larger than the clocked ones.

    PYTHONPATH=. .venv/bin/python benchmarks/api_vs_eval.py --runs 3   # 75x75x3, 2,048 samples
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402

#: (phase, regex over ``<path from ckptfix/ or tensorflow/>:<function>``) of the cProfile breakdown. Rows may
#: nest (the agreement contains its own import and restore); the import/restore call counts show how many.
PHASES = [
    ("read the .meta", r"^ckptfix/.*:load_meta_graph$"),
    ("graph analysis", r"^ckptfix/graph/index\.py:__init__$|^ckptfix/.*:(find_batchnorm_layers|detect_feeds|"
                       r"check_forward_ops|checkpoint_keys|partition_layout)$"),
    ("open the source (graph analysis, stored statistics)", r"^ckptfix/sources/graph\.py:__init__$"),
    ("stored statistics (before the redesign)", r"^ckptfix/.*:_?stored_statistics$"),
    ("graph rewrite", r"^ckptfix/.*:_?(rewrite_graph_def|inference_graph_def|without_backprop)$"),
    ("import", r"^tensorflow/python/framework/importer\.py:_import_graph_def_internal$"),
    ("restore", r"^ckptfix/graph/session\.py:restore$|^tensorflow/.*/saver\.py:restore$"),
    ("streaming", r"^ckptfix/.*:_?stream$"),
    ("agreement", r"^ckptfix/.*:_?agreement$|^ckptfix/.*(forward|inference)\.py:(outputs|load_statistics)$"
                  r"|^ckptfix/.*:(inference_outputs|assign_statistics)$"
                  r"|^ckptfix/.*inference\.py:__init__$"),
    ("new statistics", r"^ckptfix/.*:_?layer_report$"),
    ("write", r"^ckptfix/.*:write_recalibrated_checkpoint$"),
    ("read-back", r"^ckptfix/.*:_?verify(_in_place)?$"),
]


@contextlib.contextmanager
def _last_batch_clock(last: np.ndarray, marks: dict):
    """Set ``marks["last"]`` to the end of the first TF session call fed ``last`` (``Session.run`` or a callable);
    later calls with it (the agreement's outputs when it keeps every sample) are not streaming."""
    import tensorflow as tf

    session_class = tf.compat.v1.Session
    saved = {name: session_class.__dict__.get(name) for name in ("run", "make_callable")}
    original_run, original_make_callable = session_class.run, session_class.make_callable

    def fed_last(values) -> bool:
        return any(isinstance(v, np.ndarray) and v.shape == last.shape and np.array_equal(v[0], last[0])
                   and np.array_equal(v[-1], last[-1]) for v in values)

    def run(self, fetches, feed_dict=None, *args, **kwargs):
        result = original_run(self, fetches, feed_dict, *args, **kwargs)
        if feed_dict and fed_last(feed_dict.values()):
            marks.setdefault("last", time.perf_counter())
        return result

    def make_callable(self, *args, **kwargs):
        callable_ = original_make_callable(self, *args, **kwargs)

        def timed(*values, **options):
            result = callable_(*values, **options)
            if fed_last(values):
                marks.setdefault("last", time.perf_counter())
            return result

        return timed

    session_class.run, session_class.make_callable = run, make_callable
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                delattr(session_class, name)
            else:
                setattr(session_class, name, value)


def api_call(prefix: str, batches: list[np.ndarray], output: Path, batch_size: int, agreement_samples: int = 256,
             profile: cProfile.Profile | None = None) -> dict:
    """Seconds of the whole ``ckptfix.recalibrate`` call (default options but ``agreement_samples``) and of its
    parts around streaming."""
    import ckptfix

    shutil.rmtree(output, ignore_errors=True)
    marks: dict = {}

    def stream():
        marks["first"] = time.perf_counter()
        yield from batches

    with _last_batch_clock(batches[-1], marks):
        start = time.perf_counter()
        if profile is not None:
            profile.enable()
        report = ckptfix.recalibrate(prefix, stream(), output=output, batch_size=batch_size,
                                     agreement_samples=agreement_samples)
        if profile is not None:
            profile.disable()
        end = time.perf_counter()
    if report.agreement is None and agreement_samples:
        raise RuntimeError("the output-agreement check did not run: the benchmark measures the call users get")
    timing = {"whole": end - start}
    if "last" in marks:
        timing.update(before=marks["first"] - start, stream=marks["last"] - marks["first"], after=end - marks["last"])
    return timing


def phase_rows(profile: cProfile.Profile) -> list[list[str]]:
    """One row per profiled function matching a ``PHASES`` pattern: phase, function, calls, cumulative seconds."""
    entries = pstats.Stats(profile).stats  # (file, line, function) -> (cc, ncalls, tottime, cumtime, callers)
    named = {}
    for (file, _line, function), (_cc, calls, _tottime, cumulative, _callers) in entries.items():
        where = re.search(r"(ckptfix|tensorflow)/.*", file.replace("\\", "/"))
        if where:
            name = f"{where.group(0)}:{function}"
            previous = named.get(name, (0, 0.0))
            named[name] = (previous[0] + calls, previous[1] + cumulative)
    rows = []
    for phase, pattern in PHASES:
        matched = sorted((name for name in named if re.search(pattern, name)), key=lambda n: -named[n][1])
        if not matched:
            rows.append([phase, "not found", "", ""])
        for name in matched:
            rows.append([phase, f"`{name}`", str(named[name][0]), f"{named[name][1]:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=75, help="Inception-v3's minimum is 75")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agreement-samples", type=int, default=256,
                        help="the API's output-agreement check (256: the default users get; 0: off)")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run of the phase breakdown")
    args = parser.parse_args()

    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    print(f"machine: {_models.machine()}")  # the load average before anything runs
    folder = Path(tempfile.mkdtemp(prefix="ckptfix-bench-api-vs-eval-"))
    try:
        info = _models.build_stale(folder / "train", args.image_size, "inception_v3")
        batches = _models.calibration_batches(args.samples, args.image_size, args.batch_size)
        print(f"model: tf-slim Inception-v3 (no aux logits), {info['bn_layers']} BN layers, {info['parameters']:,} "
              f"parameters, {info['variables']} variables (with Momentum slots), checkpoint {info['checkpoint_mb']} MB; "
              f"input {args.image_size}x{args.image_size}x3, {args.samples} samples in batches of {args.batch_size}")
        evals, api = [], []
        for run in range(args.runs):
            for side in (["eval", "api"] if run % 2 == 0 else ["api", "eval"]):
                if side == "eval":
                    evals.append(_models.forward_baseline(info, batches))
                    evals[-1]["whole"] = evals[-1]["setup"] + evals[-1]["forward"]
                else:
                    api.append(api_call(info["prefix"], batches, folder / "out", args.batch_size, args.agreement_samples))
                last = evals[-1] if side == "eval" else api[-1]
                print(f"  run {run + 1} {side}: { {k: round(v, 2) for k, v in last.items()} }", file=sys.stderr)
        eval_whole = _models.median([r["whole"] for r in evals])
        forward = _models.median([r["forward"] for r in evals])
        rows = [
            ["eval script: import + restore", _models.spread([r["setup"] for r in evals]), "", ""],
            ["eval script: forward loop", _models.spread([r["forward"] for r in evals]), "", ""],
            ["**eval script: whole**", _models.spread([r["whole"] for r in evals]), "1.00", ""],
            [f"**API call: whole** (agreement_samples={args.agreement_samples})", _models.spread([r["whole"] for r in api]),
             f"{_models.median([r['whole'] for r in api]) / eval_whole:.3f}", "<= 1.2"],
        ]
        if all("stream" in r for r in api):
            stream = _models.median([r["stream"] for r in api])
            rows += [
                ["API: before streaming (analysis, import, restore)", _models.spread([r["before"] for r in api]), "", ""],
                ["API: streaming", _models.spread([r["stream"] for r in api]), f"{stream / forward:.3f} x forward loop",
                 "<= 1.05"],
                ["API: after streaming (agreement, write, read-back)", _models.spread([r["after"] for r in api]), "", ""],
            ]
        print(_models.table(["", "seconds, median (min-max)", "x eval script", "target"], rows))
        print(f"{args.runs} runs per side, ABBA order; ratios are of medians.")
        if not args.no_profile:
            profile = cProfile.Profile()
            profiled = api_call(info["prefix"], batches, folder / "out", args.batch_size, args.agreement_samples, profile)
            print(f"\none more API call under cProfile: {profiled['whole']:.2f} s whole; cumulative seconds "
                  "(rows nest: the agreement holds its own import and restore)")
            print(_models.table(["phase", "function", "calls", "cumulative s"], phase_rows(profile)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
