"""Benchmark 4 -- scale: time and peak memory of ``recalibrate`` at 1x, 4x and 16x the calibration samples, at
two batch sizes.

Each configuration runs in a fresh process (peak RSS, ``ru_maxrss``, is per process) on the same stale tf-slim
ResNet-v1-50 checkpoint. Calibration batches are generated on the fly from a seeded generator, so the data
itself holds one batch in memory whatever the sample count and the peak measures ckptfix alone. Expected:
streaming time linear in the samples (constant ms/sample), peak memory flat.

    .venv/bin/python benchmarks/scale.py               # ~5 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402


def _child(prefix: str, samples: int, batch_size: int, image_size: int, output: Path) -> dict:
    from ckptfix import _quiet

    _quiet.silence_tensorflow()

    class Generated:
        """``samples`` samples in batches, batch k drawn from a generator seeded with k (one batch in memory)."""

        def __len__(self) -> int:
            return -(-samples // batch_size)

        def __iter__(self):
            for k in range(len(self)):
                n = min(batch_size, samples - k * batch_size)
                rng = np.random.default_rng(k)
                yield rng.standard_normal((n, image_size, image_size, 3), dtype=np.float32) * 0.5 + 0.1

    result = _models.timed_recalibrate(prefix, Generated(), output, batch_size)
    return {
        "whole": result["whole"],
        "stream": result["stream"],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "samples": result["report"].num_samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--base-samples", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--child", nargs=4, metavar=("PREFIX", "SAMPLES", "BATCH", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        prefix, samples, batch_size, out = args.child
        print(json.dumps(_child(prefix, int(samples), int(batch_size), args.image_size, Path(out))))
        return

    folder = Path(tempfile.mkdtemp(prefix="ckptfix-bench-scale-"))
    try:
        info = _models.build_stale_resnet(folder / "train", args.image_size)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        print(f"machine: {_models.machine()}")
        print(f"model: tf-slim ResNet-v1-50 ({info['bn_layers']} BN layers, checkpoint {info['checkpoint_mb']} MB),"
              f" input {args.image_size}x{args.image_size}x3; one process per run")
        rows = []
        for batch_size in args.batch_sizes:
            for factor in args.factors:
                samples = factor * args.base_samples
                runs = []
                for _ in range(args.runs):
                    command = [sys.executable, __file__, "--image-size", str(args.image_size), "--child",
                               info["prefix"], str(samples), str(batch_size), str(folder / "out")]
                    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
                    runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(f"  {samples} samples, batch {batch_size}: {runs[-1]}", file=sys.stderr)
                stream = [r["stream"] for r in runs]
                rows.append([
                    f"{factor}x", str(samples), str(batch_size), _models.spread(stream),
                    f"{_models.median(stream) / samples * 1000:.2f}",
                    _models.spread([r["whole"] for r in runs]),
                    f"{_models.median([r['peak_mb'] for r in runs]):,.0f}",
                ])
        print(_models.table(["scale", "samples", "batch", "streaming s, median (min-max)", "ms/sample",
                             "whole call s", "peak RSS MB"], rows))
        print(f"{args.runs} runs per row, each in a fresh process.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
