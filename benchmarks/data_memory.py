"""Benchmark: peak memory of a recalibration when the calibration set grows 16x.

    .venv/bin/python benchmarks/data_memory.py [--images 500] [--size 64] [--runs 2]

Same model as ``data_pipeline.py``. For a JPEG folder and for a ``.npy`` file of ``N`` and ``16 N`` samples,
recalibrates in a fresh child process two ways: ``ckptfix recalibrate`` (the CLI's own ``main``, which
puts TensorFlow's CPU tensors on its BFC allocator) and ``ckptfix.recalibrate`` (the Python API, which
leaves the process's allocators alone: glibc ``malloc``). Both run batch 32, shuffled, without the
agreement check. Each child reports its own peak resident memory: ``VmHWM`` of ``/proc/self/status`` at its
exit. Not ``ru_maxrss``: Python starts children with ``vfork`` + ``exec``, and at ``exec`` Linux folds the
high-water mark of the memory it leaves (the parent's, shared under ``vfork``) into the child's
``ru_maxrss``, so a child that only runs ``pass`` reports the parent's peak -- here the parent's ~400 MB
after writing the 16 N ``.npy`` through a memory map. The target is growth <= 10 % from N to 16 N.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import build_model, machine, write_jpegs  # noqa: E402

PEAK = """
peak_file = sys.argv.pop()  # the last argument: where to write the peak
def report_peak():
    peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("VmHWM", peak_kb, file=open(peak_file, "w"))
"""
CLI_CHILD = "import atexit, sys" + PEAK + """
atexit.register(report_peak)
from ckptfix.cli.app import main
sys.argv[0] = "ckptfix"
main()
"""
API_CHILD = "import sys, ckptfix" + PEAK + """
ckptfix.recalibrate(sys.argv[1], sys.argv[2], output=sys.argv[3], batch_size=32, shuffle=True, agreement_samples=0)
report_peak()
"""
WAYS = {"CLI": CLI_CHILD, "API": API_CHILD}


def peak_rss_mb(way: str, prefix: str, data: Path, output: Path) -> tuple[float, float]:
    """Peak resident memory (MB) and wall time (s) of one recalibration in a fresh process, ``way`` "CLI"
    or "API"."""
    peak_file = output.with_name(output.name + ".peak")
    if way == "CLI":
        args = ["recalibrate", prefix, str(data), "-o", str(output), "--batch-size", "32", "--shuffle",
                "--agreement-samples", "0", "--no-progress"]
    else:
        args = [prefix, str(data), str(output)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WAYS[way], *args, str(peak_file)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"{way} recalibration of {data} failed (exit {done.returncode}): {done.stderr[-500:]}")
    return int(peak_file.read_text().split()[1]) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=2, help="runs of every row, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prefix = build_model(root / "train", args.size)
        sources = {}
        for factor in (1, 16):
            count = args.images * factor
            write_jpegs(root / f"jpegs-{factor}", count, args.size)
            sources["JPEG folder", count] = root / f"jpegs-{factor}"
        for factor in (1, 16):
            count = args.images * factor
            path = root / f"x-{factor}.npy"
            array = np.lib.format.open_memmap(path, "w+", np.float32, (count, args.size, args.size, 3))
            array[:] = np.random.default_rng(0).normal(size=(1, args.size, args.size, 3)).astype(np.float32)
            array.flush()
            del array
            sources[".npy", count] = path
        peaks: dict[tuple, list[float]] = {}
        seconds: dict[tuple, list[float]] = {}
        for run in range(args.runs):
            for way in WAYS:
                for (name, count), data in sources.items():
                    output = root / f"out-{way}-{run}-{data.stem}"
                    peak, wall = peak_rss_mb(way, prefix, data, output)
                    peaks.setdefault((way, name, count), []).append(peak)
                    seconds.setdefault((way, name, count), []).append(wall)
        print(f"machine: {machine()}")
        print(f"{'way':4}  {'source':12}  {'samples':>7}  {'data MB':>7}  peak RSS MB per run  (process wall s)")
        for key, values in peaks.items():
            way, name, count = key
            data_mb = count * args.size * args.size * 3 * 4 / 2**20
            runs = " / ".join(f"{v:.0f}" for v in values)
            print(f"{way:4}  {name:12}  {count:7d}  {data_mb:7.0f}  {runs}  ({' / '.join(f'{s:.1f}' for s in seconds[key])})")
        print("growth N -> 16 N per run:")
        for way in WAYS:
            for name in ("JPEG folder", ".npy"):
                small, large = peaks[way, name, args.images], peaks[way, name, 16 * args.images]
                growth = " / ".join(f"{100 * (b / a - 1):+.1f} %" for a, b in zip(small, large))
                print(f"{way:4}  {name:12}  {growth}")


if __name__ == "__main__":
    main()
