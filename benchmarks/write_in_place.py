"""Benchmark -- writing the recalibrated checkpoint: the in-place copy against the parts route.

A Saver checkpoint shaped like the Inception-v3 benchmark's (one 166 MB shard: float32 weights, and 94 BN layers'
moving mean / variance of 32..2,048 channels) is built in a temp folder; ``write_recalibrated_checkpoint`` then
writes it with every BN layer's statistics replaced, alternately (ABAB) through

* the in-place copy (default when every shard fits in one part): shards copied as files, statistics written over
  their bytes, index checksums patched, the copy compared with the input byte for byte and the statistics read
  back by TensorFlow;
* the parts route (``_copy_in_place`` answering False): every tensor read with ``RestoreV2``, written with
  ``SaveV2``, merged, and read back with fingerprints.

The two outputs are checked to be byte-identical; the output folder is removed after each run.

    PYTHONPATH=. .venv/bin/python benchmarks/write_in_place.py --runs 5
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402


def build(folder: Path, megabytes: int, layers: int) -> tuple[Path, dict]:
    """The checkpoint, and the new statistics (key -> float64 array)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    channels = [int(c) for c in rng.choice([32, 64, 96, 192, 320, 384, 448, 2048], layers)]
    new = {}
    graph = tf.Graph()
    with graph.as_default():
        for k in range(megabytes // 4):
            v1.get_variable(f"conv{k:03d}/weights", shape=[1 << 20], initializer=v1.initializers.random_normal(seed=k))
        for k, c in enumerate(channels):
            for which, value in (("moving_mean", 0.0), ("moving_variance", 1.0)):
                v1.get_variable(f"conv{k:03d}/BatchNorm/{which}", initializer=np.full(c, value, np.float32), trainable=False)
                new[f"conv{k:03d}/BatchNorm/{which}"] = rng.random(c) + (1.0 if which == "moving_variance" else 0.0)
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = Path(saver.save(session, str(folder / "model.ckpt")))
    return prefix, new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=164)
    parser.add_argument("--layers", type=int, default=94)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    from ckptfix.io import checkpoint_writer, locate_checkpoint

    print(f"machine: {_models.machine()}")
    folder = Path(tempfile.mkdtemp(prefix="ckptfix-bench-write-"))
    in_place = checkpoint_writer._copy_in_place
    try:
        prefix, new = build(folder / "train", args.megabytes, args.layers)
        size = sum(p.stat().st_size for p in prefix.parent.glob(prefix.name + ".*")) / 1e6
        print(f"checkpoint: {size:.1f} MB, {args.layers} BN layers' statistics replaced")
        seconds: dict[str, list[float]] = {"in-place copy": [], "parts route": []}
        digests = {}
        for run in range(args.runs):
            for side in (seconds if run % 2 == 0 else reversed(list(seconds))):
                checkpoint_writer._copy_in_place = in_place if side == "in-place copy" else (lambda *a: False)
                output = folder / "out"
                start = time.perf_counter()
                written = checkpoint_writer.write_recalibrated_checkpoint(locate_checkpoint(prefix), new, output)
                seconds[side].append(time.perf_counter() - start)
                digests[side] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                 for p in sorted(written.parent.iterdir())}
                shutil.rmtree(output)
        if digests["in-place copy"] != digests["parts route"]:
            raise RuntimeError("the two routes wrote different files")
        base = _models.median(seconds["parts route"])
        rows = [[side, _models.spread(values), f"{_models.median(values) / base:.2f}"] for side, values in seconds.items()]
        print(_models.table(["write_recalibrated_checkpoint", "seconds, median (min-max)", "x parts route"], rows))
        print(f"{args.runs} runs per side, alternating; the two routes' files are byte-identical.")
    finally:
        checkpoint_writer._copy_in_place = in_place
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
