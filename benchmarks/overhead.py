"""Benchmark 1 -- overhead of ckptfix against the physical limit, one forward pass over the calibration set.

A stale tf-slim ResNet-v1-50 training checkpoint (random weights, moving statistics 0 / 1, the whole training
graph in its .meta) is built in a temp folder; the same calibration batches (arrays, so no decoding is
measured) then go through

* the limit: the saved graph imported as is and restored, one training-mode ``session.run(logits)`` per batch;
* ckptfix: ``ckptfix.recalibrate`` on the checkpoint (output-agreement check off, ``agreement_samples=0``),
  timed as a whole (graph analysis, import, restore, streaming, checkpoint write and read-back) and for its
  streaming part alone.

The two sides alternate (ABBA order) in one process so that machine load hits both alike; medians of
``--runs`` runs are reported. One more ckptfix run with the default output-agreement check (256 samples run
three more times, in a second graph) shows what that diagnostic costs on top.

    .venv/bin/python benchmarks/overhead.py            # 96x96x3, 2,048 samples: ~6 min on 2 idle cores, ~10 loaded
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-agreement-run", action="store_true", help="skip the run with the agreement check")
    args = parser.parse_args()

    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    folder = Path(tempfile.mkdtemp(prefix="ckptfix-bench-overhead-"))
    try:
        info = _models.build_stale_resnet(folder / "train", args.image_size)
        batches = _models.calibration_batches(args.samples, args.image_size, args.batch_size)
        print(f"machine: {_models.machine()}")
        print(f"model: tf-slim ResNet-v1-50, {info['bn_layers']} BN layers, {info['parameters']:,} parameters, "
              f"{info['variables']} variables (with Momentum slots), checkpoint {info['checkpoint_mb']} MB; "
              f"input {args.image_size}x{args.image_size}x3, {args.samples} samples in batches of {args.batch_size}")
        limit, fix = [], []
        for run in range(args.runs):
            sides = ["limit", "ckptfix"] if run % 2 == 0 else ["ckptfix", "limit"]
            for side in sides:
                if side == "limit":
                    limit.append(_models.forward_baseline(info, batches))
                else:
                    fix.append(_models.timed_recalibrate(info["prefix"], batches, folder / "out", args.batch_size))
                last = limit[-1] if side == "limit" else fix[-1]
                shown = {k: round(v, 2) for k, v in last.items() if isinstance(v, float)}
                print(f"  run {run + 1} {side}: {shown}", file=sys.stderr)
        with_agreement = None
        if not args.no_agreement_run:
            with_agreement = _models.timed_recalibrate(info["prefix"], batches, folder / "out", args.batch_size,
                                                       agreement_samples=256)
        forward = [r["forward"] for r in limit]
        base = _models.median(forward)
        rows = [
            ["limit: forward pass (training mode, logits)", _models.spread(forward), "1.00", ""],
            ["limit: import + restore of the saved graph", _models.spread([r["setup"] for r in limit]), "", ""],
            ["ckptfix: streaming (forward + statistics + merge)", _models.spread([r["stream"] for r in fix]),
             f"{_models.median([r['stream'] for r in fix]) / base:.3f}", "<= 1.05"],
            ["ckptfix: before streaming (analysis, import, restore)", _models.spread([r["before"] for r in fix]), "", ""],
            ["ckptfix: after streaming (statistics, write, read-back)", _models.spread([r["after"] for r in fix]), "", ""],
            ["ckptfix: whole `recalibrate` call", _models.spread([r["whole"] for r in fix]),
             f"{_models.median([r['whole'] for r in fix]) / base:.3f}", "<= 1.15"],
        ]
        if with_agreement is not None:
            rows.append(["ckptfix: whole call with the default output-agreement check (1 run)",
                         f"{with_agreement['whole']:.2f}", f"{with_agreement['whole'] / base:.3f}", ""])
        print(_models.table(["", "seconds, median (min-max)", "x forward", "target"], rows))
        print(f"{args.runs} runs per side; ratios are of medians.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
