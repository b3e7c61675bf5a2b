"""Benchmark: peak memory of a recalibration when the calibration set grows 16x.

    .venv/bin/python benchmarks/data_memory.py [--images 500] [--size 64]

Same model as ``data_pipeline.py``. For a JPEG folder and for a ``.npy`` file of ``N`` and
``16 N`` samples, runs ``ckptfix.recalibrate`` in a fresh child process, which reports its own peak resident
memory: ``VmHWM`` of ``/proc/self/status`` at its end. Not ``ru_maxrss``: Python starts children with
``vfork`` + ``exec``, and at ``exec`` Linux folds the high-water mark of the memory it leaves (the parent's,
shared under ``vfork``) into the child's ``ru_maxrss``, so a child that only runs ``pass`` reports the
parent's peak -- here the parent's ~400 MB after writing the 16 N ``.npy`` through a memory map. The target
is growth <= 10 % from N to 16 N.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import build_model, machine, write_jpegs  # noqa: E402

CHILD = """
import sys, ckptfix
report = ckptfix.recalibrate(sys.argv[1], sys.argv[2], output=sys.argv[3], batch_size=32, shuffle=True,
                             agreement_samples=0)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(report.num_samples, peak_kb)
"""


def peak_rss_mb(prefix: str, data: Path, output: Path) -> tuple[float, int]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, prefix, str(data), str(output)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = child.stdout.read()
    if child.wait():
        raise RuntimeError(f"recalibration of {data} failed (exit {child.returncode})")
    used, peak_kb = map(int, out.strip().splitlines()[-1].split())
    return peak_kb / 1024, used


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prefix = build_model(root / "train", args.size)
        rows = []
        for factor in (1, 16):
            count = args.images * factor
            jpegs = root / f"jpegs-{factor}"
            write_jpegs(jpegs, count, args.size)
            rss, used = peak_rss_mb(prefix, jpegs, root / f"out-jpeg-{factor}")
            rows.append(("JPEG folder", count, used, rss))
        for factor in (1, 16):
            count = args.images * factor
            array = np.lib.format.open_memmap(root / f"x-{factor}.npy", "w+", np.float32, (count, args.size, args.size, 3))
            array[:] = np.random.default_rng(0).normal(size=(1, args.size, args.size, 3)).astype(np.float32)
            array.flush()
            del array
            rss, used = peak_rss_mb(prefix, root / f"x-{factor}.npy", root / f"out-npy-{factor}")
            rows.append((".npy (read by row)", count, used, rss))
        print(f"machine: {machine()}")
        print(f"{'source':22}  {'samples':>7}  {'data MB':>8}  {'peak RSS MB':>11}")
        for name, count, used, rss in rows:
            data_mb = count * args.size * args.size * 3 * 4 / 2**20
            print(f"{name:22}  {used:7d}  {data_mb:8.0f}  {rss:11.0f}")


if __name__ == "__main__":
    main()
