"""Benchmark: peak memory of writing a recalibrated multi-GB checkpoint, streaming writer vs the previous one.

Builds a synthetic checkpoint with ``tf.compat.v1.train.Saver`` in a temp folder (``--tensors`` float32
variables of ``--tensor-mb`` MB each, plus a few BN moving statistics), then writes it back with new statistics
through ``write_recalibrated_checkpoint`` in a fresh child process per run, once with this tree's writer and
once with the writer of git ``--old-ref`` (the whole checkpoint read into numpy, one ``SaveV2`` call, then read
back whole). Each child reports its peak resident memory (``VmHWM``), its resident memory just before the
write (TensorFlow imported, checkpoint located) and the wall time of the write; the output is checked to hold
the new statistics and is then deleted. (``ru_maxrss`` is not used: a child created by fork + exec inherits
the parent's high-water mark in it, and the checkpoint is built in a child of its own for the same reason.)

    .venv/bin/python benchmarks/large_checkpoint.py              # 2.4 GB checkpoint, ~3 min, ~8 GB of /tmp
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BN_KEYS = ("bn1/moving_mean", "bn1/moving_variance", "bn2/moving_mean", "bn2/moving_variance")
BN_CHANNELS = 64


def _build(folder: Path, tensors: int, tensor_mb: int) -> str:
    """Write the synthetic checkpoint (TF1 Saver, one data shard) and its .meta; return the prefix."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        for number in range(tensors):
            v1.get_variable(f"layer{number}/kernel", shape=[tensor_mb * 2**18],
                            initializer=v1.initializers.random_uniform(seed=number))
        for key in BN_KEYS:
            v1.get_variable(key, shape=[BN_CHANNELS], initializer=v1.initializers.ones(), trainable=False)
        saver = v1.train.Saver()
        folder.mkdir(parents=True, exist_ok=True)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return saver.save(session, str(folder / "model.ckpt"), global_step=1)


def _old_writer(ref: str, folder: Path) -> Path:
    path = folder / "old_writer.py"
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:ckptfix/io/checkpoint_writer.py"],
                            check=True, capture_output=True, text=True).stdout
    path.write_text(source)
    return path


def _child(prefix: str, output: str, writer_path: str | None) -> dict:
    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    import tensorflow as tf  # noqa: F401  (counted in the baseline, as in a real run)

    from ckptfix.io import locate_checkpoint
    from ckptfix.io import checkpoint_writer as current_writer

    writer = current_writer
    if writer_path:
        spec = importlib.util.spec_from_file_location("old_writer", writer_path)
        writer = sys.modules["old_writer"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
        spec.loader.exec_module(writer)
    files = locate_checkpoint(prefix)
    new_values = {key: np.full(BN_CHANNELS, 0.5) for key in BN_KEYS}
    before_mb = _status_mb("VmRSS")
    start = time.perf_counter()
    written = writer.write_recalibrated_checkpoint(files, new_values, Path(output))
    seconds = time.perf_counter() - start
    peak_mb = _status_mb("VmHWM")
    check = tf.train.load_checkpoint(str(written))
    assert all((check.get_tensor(key) == 0.5).all() for key in BN_KEYS)
    return {"peak_mb": peak_mb, "before_mb": before_mb, "seconds": seconds,
            "shards": len(list(Path(output).glob("*.data-*")))}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _run_child(prefix: str, output: Path, writer_path: Path | None) -> dict:
    result = _in_child("write", prefix, str(output), *([str(writer_path)] if writer_path else []))
    shutil.rmtree(output)
    return result


def _in_child(*args: str) -> dict:
    command = [sys.executable, __file__, *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=6)
    parser.add_argument("--tensor-mb", type=int, default=400)
    parser.add_argument("--runs", type=int, default=2, help="runs per writer, alternating")
    parser.add_argument("--old-ref", default="main", help="git ref whose writer is the 'before' side")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir="/tmp") as temp:
        folder = Path(temp)
        prefix = _in_child("build", str(folder / "train"), str(args.tensors), str(args.tensor_mb))["prefix"]
        size_mb = sum(f.stat().st_size for f in (folder / "train").glob("model.ckpt-1.data*")) / 2**20
        writers = {"streaming (this tree)": None, f"previous ({args.old_ref})": _old_writer(args.old_ref, folder)}
        results: dict[str, list[dict]] = {name: [] for name in writers}
        for run in range(args.runs):
            for name in (list(writers) if run % 2 == 0 else list(writers)[::-1]):
                results[name].append(_run_child(prefix, folder / "out", writers[name]))
        print(f"checkpoint: {args.tensors} x {args.tensor_mb} MB float32 + {len(BN_KEYS)} BN vectors, "
              f"{size_mb:,.0f} MB on disk")
        print("| writer | peak RSS MB | RSS before write MB | peak - before MB | write s | output shards |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, runs in results.items():
            peak = max(r["peak_mb"] for r in runs)
            before = max(r["before_mb"] for r in runs)
            seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs)
            print(f"| {name} | {peak:,.0f} | {before:,.0f} | {peak - before:,.0f} | {seconds} | {runs[0]['shards']} |")
        print(f"machine: {_models.machine()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "write":
        print(json.dumps(_child(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)))
    elif len(sys.argv) > 1 and sys.argv[1] == "build":
        print(json.dumps({"prefix": _build(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))}))
    else:
        main()
