"""Benchmark -- ``--until-stable TOL`` against a full pass over a calibration set much larger than needed.

A stale tf-slim Inception-v3 training checkpoint (``_models.build_stale``, 94 BN layers, 75x75x3, random
weights) and calibration arrays (``_models.calibration_batches``' noise, written to one ``.npy`` file):

1. how many samples TOL needs: ``ckptfix.diagnose(..., until_stable=TOL)`` on a probe set;
2. a set of ``--factor`` (16) times that many samples, read twice, in the same order (no shuffling):
   ``until_stable=TOL`` and a full pass; each ``diagnose`` call timed whole (model load, pass, agreement check
   on its default 256 samples);
3. the difference between the two runs' statistics, per channel, in units of the early run's reported
   standard errors (mean: ``|m_early - m_full| / (SE_mean * sqrt(var + eps))``; variance:
   ``|v_early - v_full| / (RSE_var * (var + eps))``): median, fraction within 2 and 3, largest -- against what
   honest standard errors give (``|N(0, 1)|``; the largest of thousands of channels is ~4, not under 3).

    PYTHONPATH=. .venv/bin/python benchmarks/until_stable.py --tolerance 0.05
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402


def _diagnose(prefix: str, data: Path, batch_size: int, **options):
    import ckptfix

    start = time.perf_counter()
    report = ckptfix.diagnose(prefix, data, batch_size=batch_size, shuffle=False, **options)
    return report, time.perf_counter() - start


def _write(path: Path, num_samples: int, image_size: int, seed: int) -> Path:
    """``num_samples`` calibration samples in one .npy, written a chunk at a time (no copy of the whole)."""
    chunk = 1024
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(num_samples, image_size, image_size, 3))
    for start in range(0, num_samples, chunk):
        count = min(chunk, num_samples - start)
        array[start:start + count] = _models.calibration_batches(count, image_size, count, seed=seed + start)[0]
    array.flush()
    del array
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--factor", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=75)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--probe-samples", type=int, default=8192)
    args = parser.parse_args()
    print(_models.machine())
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        info = _models.build_stale(root / "model", args.image_size, "inception_v3")
        prefix = info["prefix"]
        probe = _write(root / "probe.npy", args.probe_samples, args.image_size, seed=0)
        needed, _ = _diagnose(prefix, probe, args.batch_size, until_stable=args.tolerance, agreement_samples=0)
        if needed.stop_reason != "stable":
            raise SystemExit(f"{args.probe_samples} samples do not reach --until-stable {args.tolerance}")
        probe.unlink()
        total = needed.num_samples * args.factor
        print(f"TOL {args.tolerance}: {needed.num_samples} samples ({needed.num_batches} batches) needed; "
              f"set of {args.factor}x = {total} samples")
        data = _write(root / "large.npy", total, args.image_size, seed=1)
        early, early_seconds = _diagnose(prefix, data, args.batch_size, until_stable=args.tolerance)
        full, full_seconds = _diagnose(prefix, data, args.batch_size)
        z_mean, z_variance = [], []
        for a, b in zip(early.layers, full.layers):
            scale2 = a.new_variance + a.epsilon
            z_mean.append(np.abs(a.new_mean - b.new_mean) / (a.mean_standard_errors * np.sqrt(scale2)))
            z_variance.append(np.abs(a.new_variance - b.new_variance) / (a.variance_relative_errors * scale2))
        z_mean, z_variance = np.concatenate(z_mean), np.concatenate(z_variance)
        print(_models.table(
            ["run", "samples", "batches", "seconds (whole diagnose call)", "x full pass", "stopped"],
            [["until-stable", str(early.num_samples), str(early.num_batches), f"{early_seconds:.1f}",
              f"{early_seconds / full_seconds:.2f}", early.stop_reason],
             ["full pass", str(full.num_samples), str(full.num_batches), f"{full_seconds:.1f}", "1.00",
              full.stop_reason]]))
        for name, z in (("mean", z_mean), ("variance", z_variance)):
            print(f"{name}: {z.size} channels; difference early vs full in the early run's standard errors: "
                  f"median {np.median(z):.2f}, within 2: {np.mean(z <= 2):.2%}, within 3: {np.mean(z <= 3):.2%}, "
                  f"largest {z.max():.2f} (for honest standard errors, |N(0, 1)| has median 0.67, 95.45% within 2, "
                  f"99.73% within 3, and its largest of {z.size} is typically "
                  f"{np.sqrt(2 * np.log(z.size)):.1f})")


if __name__ == "__main__":
    main()
