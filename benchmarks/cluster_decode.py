"""Benchmark -- decoding per worker under ``TF_CONFIG``: one image folder read by one process and by two workers.

A folder of ImageNet-like JPEG files (``--width`` x ``--height``, smooth random content, quality 90) calibrates the
stale tf-slim ResNet-v1-50 of ``_models.py`` (input ``--image-size``, ``--preprocess inception`` resizing each
image): ``ckptfix diagnose CKPT FOLDER --json`` is run

* as one process, and
* as two workers of a ``TF_CONFIG`` cluster on 127.0.0.1 ports (started together),

each process under ``strace -f --seccomp-bpf -e trace=openat``: the files of the folder each process opens are
its decode work (TensorFlow's ``read_file`` opens a file once per decode). With ``--code DIR`` the same runs use
another ckptfix source tree as well (e.g. the code before issue 26: ``git archive main ckptfix | tar -x -C DIR``),
for a before/after comparison. The chief's statistics are compared with the one process's, and each process's
wall time (from its start, TensorFlow's import included, to its exit) and CPU time are printed.

    .venv/bin/python benchmarks/cluster_decode.py                      # 512 files: ~3 min on 2 loaded cores
    .venv/bin/python benchmarks/cluster_decode.py --code /tmp/ckptfix-main
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402

sys.path.insert(0, str(_models.ROOT / "tests"))
from scaling.helpers import free_ports, tf_config  # noqa: E402  (the worker tests' loopback cluster)


def _jpegs(folder: Path, count: int, width: int, height: int) -> int:
    """``count`` JPEG files of smooth random content; their total size in bytes."""
    import tensorflow as tf

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    total = 0
    for k in range(count):
        coarse = rng.uniform(0, 255, (1, height // 16, width // 16, 3)).astype(np.float32)
        image = tf.image.resize(coarse, (height, width))[0] + rng.normal(0, 8, (height, width, 3))
        encoded = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90).numpy()
        (folder / f"img_{k:05d}.jpg").write_bytes(encoded)
        total += len(encoded)
    return total


def _start(code: Path, args, prefix: str, folder: Path, log: Path, tf_config: str | None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = str(code)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    # bash's ``times`` prints the CPU seconds (user, system) of what it ran, strace and ckptfix, on its last line
    wrapper = ["bash", "-c", '"$@"; code=$?; times >&2; exit $code', "ckptfix"]
    command = wrapper + ["strace", "-f", "--seccomp-bpf", "-e", "trace=openat", "-o", str(log), sys.executable, "-m", "ckptfix",
               "diagnose", prefix, str(folder), "--json", "--no-progress", "--batch-size", str(args.batch_size),
               "--agreement-samples", "0"]
    return time.monotonic(), subprocess.Popen(command, env=env, cwd=str(log.parent), text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(started) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of a started process."""
    began, process = started
    out, err = process.communicate(timeout=1800)
    if process.returncode not in (0, 3):
        raise SystemExit(f"ckptfix exited {process.returncode}: {err[-2000:]}")
    user, system = (float(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", err.splitlines()[-1]))
    return time.monotonic() - began, user + system, out


def _opened(log: Path, folder: Path) -> tuple[int, int]:
    """(opens, distinct files) of ``folder``'s files in an strace log. A call another thread interrupts is logged
    as ``openat(... <unfinished ...>`` and its result on a later line: counted unless it failed at once."""
    pattern = re.compile(r'openat\([^"]*"' + re.escape(str(folder)) + r'/([^"]+)"')
    names = [m.group(1) for line in log.read_text().splitlines()
             if (m := pattern.search(line)) and not re.search(r"= -1 E", line)]
    return len(names), len(set(names))


def _decode_seconds(folder: Path, size: int, batch_size: int) -> float:
    """Seconds per file of ckptfix's own image pipeline alone (decode, ``inception`` preprocessing to ``size``)."""
    sys.path.insert(0, str(_models.ROOT))
    from ckptfix.data import open_calibration_data

    opened = open_calibration_data(folder, input_name="images:0", input_shape=(None, size, size, 3),
                                   batch_size=batch_size, shuffle=False)
    began = time.perf_counter()
    count = sum(len(batch) for batch in opened)
    return (time.perf_counter() - began) / count


def _largest_difference(one: dict, other: dict) -> float:
    """The largest difference of the statistics: variances relative, means in standard deviations."""
    worst = 0.0
    for a, b in zip(one["layers"], other["layers"]):
        scale = np.sqrt(np.array(a["new_variance"])) + 1e-12
        worst = max(worst, float(np.max(np.abs(np.array(a["new_mean"]) - b["new_mean"]) / scale)),
                    float(np.max(np.abs(np.array(a["new_variance"]) - b["new_variance"]) / np.maximum(a["new_variance"], 1e-12))))
    return worst


def _measure(code: Path, args, prefix: str, folder: Path, work: Path) -> list[list[str]]:
    rows = []
    log = work / "one.strace"
    seconds, cpu, out = _finish(_start(code, args, prefix, folder, log, None))
    one = json.loads(out)
    opens, files = _opened(log, folder)
    rows.append(["1 process", f"{one['num_batches']}", f"{opens} ({files} distinct)", f"{seconds:.1f}", f"{cpu:.1f}", "-"])
    ports = free_ports(2)
    configs = [tf_config(ports, k) for k in range(2)]
    logs = [work / f"worker{k}.strace" for k in range(2)]
    started = [_start(code, args, prefix, folder, logs[k], configs[k]) for k in range(2)]
    finished = [_finish(s) for s in started]
    chief = json.loads(finished[0][2])
    batches = {row["worker"]: row["batches"] for row in chief["devices"]}
    difference = _largest_difference(one, chief)
    for k in range(2):
        opens, files = _opened(logs[k], folder)
        rows.append([f"2 workers: worker {k}", f"{batches.get(k, 0)} of {chief['num_batches']}",
                     f"{opens} ({files} distinct)", f"{finished[k][0]:.1f}", f"{finished[k][1]:.1f}",
                     f"{difference:.1e}" if k == 0 else ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=512)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="another ckptfix source tree to run as well (the folder holding its ckptfix package)")
    args = parser.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("this benchmark counts file opens with strace: install it (apt-get install strace).")
    work = Path(tempfile.mkdtemp(prefix="ckptfix-bench-cluster-"))
    try:
        info = _models.build_stale_resnet(work / "train", args.image_size)
        size = _jpegs(work / "images", args.files, args.width, args.height)
        print(f"machine: {_models.machine()}")
        print(f"model: tf-slim ResNet-v1-50, {info['bn_layers']} BN layers, input {args.image_size}x{args.image_size}x3; "
              f"data: {args.files} JPEG files {args.width}x{args.height} ({size / args.files / 1024:.0f} kB each), "
              f"batches of {args.batch_size}")
        for size in sorted({args.image_size, 299}):
            print(f"ckptfix's image pipeline alone (decode + inception preprocessing to {size}x{size}, parallel map): "
                  f"{1000 * _decode_seconds(work / 'images', size, args.batch_size):.2f} ms per file")
        header = ["run", "batches run", "folder files opened (decoded)", "wall s (process start to exit)",
                  "CPU s (user + system, strace included)", "largest difference vs 1 process"]
        for code in [_models.ROOT, *args.code]:
            print(f"\ncode: {code}")
            print(_models.table(header, _measure(code.resolve(), args, info["prefix"], work / "images", work)), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
