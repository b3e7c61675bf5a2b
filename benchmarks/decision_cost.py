"""Benchmark -- what the decisions cost next to the forward pass: the agreement check and its output-level
"enough data" figure (issue 31).

A stale tf-slim ResNet-v1-50 training checkpoint (benchmarks/_models.py) is diagnosed on ``--samples``
calibration samples with the default agreement check (256 samples). Each call of the session is timed:

* the streaming pass: every ``moments`` call of the pass (BN on batch statistics, sums fetched);
* the agreement check's reference: ``moments`` on the kept samples mixed into new batches (batch statistics);
* its inference passes, in order: stored statistics, recomputed statistics, recomputed statistics moved within
  their standard errors -- the last one is the output-level stability figure.

    .venv/bin/python benchmarks/decision_cost.py     # 96x96x3, 2,048 samples: ~3 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    import ckptfix
    from ckptfix.sources.graph import GraphSession

    folder = Path(tempfile.mkdtemp(prefix="ckptfix-bench-decisions-"))
    calls: list[tuple[str, float]] = []
    original_moments, original_inference = GraphSession.moments, GraphSession.inference_outputs

    def moments(self, batch, keep_output):
        start = time.perf_counter()
        result = original_moments(self, batch, keep_output)
        calls.append(("reference" if keep_output else "stream", time.perf_counter() - start))
        return result

    def inference_outputs(self, batch):
        start = time.perf_counter()
        result = original_inference(self, batch)
        calls.append(("inference", time.perf_counter() - start))
        return result

    GraphSession.moments, GraphSession.inference_outputs = moments, inference_outputs
    try:
        info = _models.build_stale_resnet(folder / "train", args.image_size)
        batches = _models.calibration_batches(args.samples, args.image_size, args.batch_size)
        print(f"machine: {_models.machine()}")
        print(f"model: tf-slim ResNet-v1-50, {info['bn_layers']} BN layers; input {args.image_size}x{args.image_size}x3, "
              f"{args.samples} samples in batches of {args.batch_size}; agreement check on 256 samples")
        runs = []
        for run in range(args.runs):
            calls.clear()
            start = time.perf_counter()
            report = ckptfix.diagnose(info["prefix"], iter(batches), batch_size=args.batch_size, shuffle=False)
            whole = time.perf_counter() - start
            inference = [seconds for kind, seconds in calls if kind == "inference"]
            third = len(inference) // 3
            runs.append({
                "stream": sum(seconds for kind, seconds in calls if kind == "stream"),
                "reference": sum(seconds for kind, seconds in calls if kind == "reference"),
                "stored": sum(inference[:third]), "recomputed": sum(inference[third:2 * third]),
                "perturbed": sum(inference[2 * third:]), "whole": whole,
            })
            print(f"  run {run + 1}: {({k: round(v, 2) for k, v in runs[-1].items()})}; verdict {report.verdict}, "
                  f"unstable {report.agreement.unstable}", file=sys.stderr)
        base = _models.median([r["stream"] for r in runs])
        rows = [[name, _models.spread([r[key] for r in runs]), f"{_models.median([r[key] for r in runs]) / base:.3f}"]
                for name, key in [("streaming pass (forward + statistics)", "stream"),
                                  ("agreement: reference on mixed batches (batch statistics)", "reference"),
                                  ("agreement: inference, stored statistics", "stored"),
                                  ("agreement: inference, recomputed statistics", "recomputed"),
                                  ("output-level stability: inference, perturbed statistics", "perturbed"),
                                  ("whole diagnose call", "whole")]]
        print(_models.table(["", "seconds, median (min-max)", "x streaming pass"], rows))
        print(f"{args.runs} runs; ratios are of medians.")
    finally:
        GraphSession.moments, GraphSession.inference_outputs = original_moments, original_inference
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
