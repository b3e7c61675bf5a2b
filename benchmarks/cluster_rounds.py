"""Benchmark -- the cost of one ``--until-stable`` round in a ``TF_CONFIG`` cluster.

Under ``--until-stable`` every worker, after each of its batches, all-gathers its partial sums and merges
everyone's (``Cluster.progress``), then applies the stopping rule to the merged figures. This times that round
(gather + merge + rule) on ``--workers`` local workers (127.0.0.1 ports) for the BN layers of Inception-v3
(94 layers, 17,216 channels: 1.38 MB of float64 per worker per round), and the same gather through
``MultiWorkerMirroredStrategy.run`` (how the sums were gathered before) for comparison.

    .venv/bin/python benchmarks/cluster_rounds.py                 # ~1 min
    .venv/bin/python benchmarks/cluster_rounds.py --rounds 200 --channels 17216 --layers 94
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from scaling.helpers import free_ports, tf_config  # noqa: E402  (the worker tests' loopback cluster)


def _worker(args) -> None:
    """One worker: time ``args.rounds`` rounds, print a JSON line."""
    import tensorflow as tf

    from ckptfix.scaling.cluster import join_cluster
    from ckptfix.stats import PooledMoments, UntilStable
    from ckptfix.stats.pooled import BatchMoments

    cluster = join_cluster(120)
    rng = np.random.default_rng(cluster.rank)
    sizes = [len(part) for part in np.array_split(np.arange(args.channels), args.layers)]
    pooled = {f"layer{k}": PooledMoments(size) for k, size in enumerate(sizes)}
    for name, moments in pooled.items():
        for _ in range(3):
            moments.add(BatchMoments(512, rng.normal(size=moments.channels), rng.uniform(400, 600, moments.channels)))
    rule = UntilStable(1e-9, {name: 1e-3 for name in pooled})  # never met: every round runs in full
    cluster.progress(pooled, 3, False)  # warm-up
    began = time.perf_counter()
    for k in range(args.rounds):
        progress = cluster.progress(pooled, 3 + k, False)
        rule.reached(progress.pooled, progress.num_batches)
    rounds = (time.perf_counter() - began) / args.rounds

    def gather(value):
        return tf.distribute.get_replica_context().all_gather(value, axis=0)

    vector = tf.constant(np.concatenate([m.to_array() for m in pooled.values()])[None, :])
    cluster.strategy.run(gather, args=(vector,))
    began = time.perf_counter()
    for _ in range(args.strategy_rounds):
        cluster.strategy.experimental_local_results(cluster.strategy.run(gather, args=(vector,)))[0].numpy()
    strategy = (time.perf_counter() - began) / args.strategy_rounds
    print(json.dumps(dict(rank=cluster.rank, round_ms=rounds * 1000, strategy_gather_ms=strategy * 1000,
                          bytes_per_worker=int(vector.shape[1]) * 8)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--strategy-rounds", type=int, default=20)
    parser.add_argument("--channels", type=int, default=17216)
    parser.add_argument("--layers", type=int, default=94)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    ports = free_ports(args.workers)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    passed = [a for a in sys.argv[1:]]
    processes = [subprocess.Popen([sys.executable, __file__, "--worker", *passed], text=True, stdout=subprocess.PIPE,
                                  env={**env, "TF_CONFIG": tf_config(ports, k)}) for k in range(args.workers)]
    rows = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in processes]
    print(f"{args.workers} workers on 127.0.0.1, {args.layers} BN layers, {args.channels} channels "
          f"({rows[0]['bytes_per_worker']:,} bytes per worker per round), load {os.getloadavg()[0]:.1f}")
    for row in rows:
        print(f"  worker {row['rank']}: one round (gather + merge + rule) {row['round_ms']:.1f} ms over "
              f"{args.rounds}; the same gather through strategy.run {row['strategy_gather_ms']:.1f} ms")


if __name__ == "__main__":
    main()
