"""Benchmark 3 -- in-graph statistics against fetching the BN inputs to the host.

The obvious implementation of recalibration pulls every BN layer's input tensor to numpy for each batch and
reduces it there. ckptfix keeps the reduction in the graph (or reads what fused BN already computed) and
fetches only per-channel vectors. Both run here on the same stale tf-slim ResNet-v1-50 and the same batches;
the table gives the bytes each moves from the device per batch, and the time of the streaming loop. On a CPU
the transfer is a memcpy and the cost is the host reduction; on a GPU every fetched byte also crosses PCIe
(~12 GB/s on PCIe 3 x16), which the bytes column lets you price.

The host implementation (float64 numpy reductions of the fetched tensors) is also the exact reference the
EMA benchmark measures errors against.

    .venv/bin/python benchmarks/host_fetch.py          # ~4 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402


class HostFetch:
    """The saved graph restored as is (training mode); each batch fetches every BN input and reduces it in numpy.

    BN inputs are the first inputs of the forward FusedBatchNorm nodes (slim's default path, NHWC). Statistics
    are pooled exactly: float64 sums of x and of x**2 per channel would lose precision, so count / mean / M2
    are merged with Chan's update, as ckptfix does.
    """

    def __init__(self, info: dict) -> None:
        import tensorflow as tf

        from ckptfix.graph.index import is_gradient

        self.graph = tf.Graph()
        with self.graph.as_default():
            saver = tf.compat.v1.train.import_meta_graph(info["prefix"] + ".meta", clear_devices=True)
            self.session = tf.compat.v1.Session(graph=self.graph)
            saver.restore(self.session, info["prefix"])
        self.images = self.graph.get_tensor_by_name(info["input"])
        nodes = [op for op in self.graph.get_operations()
                 if op.type.startswith("FusedBatchNorm") and not is_gradient(op.name)]
        self.names = [op.name.rsplit("/", 1)[0] for op in nodes]
        self.inputs = [op.inputs[0] for op in nodes]
        self.count = {name: 0 for name in self.names}
        self.mean = {name: 0.0 for name in self.names}
        self.m2 = {name: 0.0 for name in self.names}
        self.bytes_per_batch = 0

    def run(self, batch: np.ndarray) -> None:
        values = self.session.run(self.inputs, {self.images: batch})
        self.bytes_per_batch = sum(v.nbytes for v in values)
        for name, x in zip(self.names, values):
            flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
            n_b = flat.shape[0]
            m_b = flat.mean(0)
            m2_b = ((flat - m_b) ** 2).sum(0)
            n_a, n = self.count[name], self.count[name] + n_b
            delta = m_b - self.mean[name]
            self.mean[name] = self.mean[name] + delta * (n_b / n)
            self.m2[name] = self.m2[name] + m2_b + delta**2 * (n_a * n_b / n)
            self.count[name] = n

    def statistics(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Layer scope (slim ResNet: op scope = variable scope) -> (mean, Bessel-corrected variance), float64."""
        return {name: (self.mean[name], self.m2[name] / (self.count[name] - 1)) for name in self.names}

    def close(self) -> None:
        self.session.close()


def exact_statistics(info: dict, batches: list[np.ndarray]) -> tuple[dict, float, int]:
    """(layer scope -> (mean, variance)) pooled in float64 on the host, the seconds of the loop, bytes/batch."""
    host = HostFetch(info)
    start = time.perf_counter()
    for batch in batches:
        host.run(batch)
    seconds = time.perf_counter() - start
    host.close()
    return host.statistics(), seconds, host.bytes_per_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    folder = Path(tempfile.mkdtemp(prefix="ckptfix-bench-fetch-"))
    try:
        info = _models.build_stale_resnet(folder / "train", args.image_size)
        batches = _models.calibration_batches(args.samples, args.image_size, args.batch_size)
        print(f"machine: {_models.machine()}")
        print(f"model: tf-slim ResNet-v1-50 ({info['bn_layers']} BN layers), input {args.image_size}x"
              f"{args.image_size}x3, {args.samples} samples in batches of {args.batch_size}")
        host_times, fix_times, limit_times = [], [], []
        host_bytes = fix_bytes = 0
        worst = 0.0
        for run in range(args.runs):
            order = ["host", "ckptfix", "limit"] if run % 2 == 0 else ["limit", "ckptfix", "host"]
            for side in order:
                if side == "host":
                    exact, seconds, host_bytes = exact_statistics(info, batches)
                    host_times.append(seconds)
                elif side == "limit":
                    limit_times.append(_models.forward_baseline(info, batches)["forward"])
                else:
                    result = _models.timed_recalibrate(info["prefix"], batches, folder / "out", args.batch_size)
                    fix_times.append(result["stream"])
                    layers = result["report"].layers
                    # per batch ckptfix fetches, per BN input: a count (int64) and two float32 vectors
                    fix_bytes = sum(8 + 2 * 4 * layer.channels for layer in layers)
                print(f"  run {run + 1} {side} done", file=sys.stderr)
            by_var_scope = {layer.name: layer for layer in layers}
            for name, (mean, variance) in exact.items():
                layer = by_var_scope[name]
                worst = max(worst, float(np.max(np.abs(layer.new_mean - mean) / np.sqrt(variance))),
                            float(np.max(np.abs(layer.new_variance / variance - 1))))
        base = _models.median(limit_times)
        rows = [
            ["limit: forward pass (logits)", "", _models.spread(limit_times), "1.00"],
            ["ckptfix: in-graph statistics, one run per batch", f"{fix_bytes / 1e3:.1f} kB",
             _models.spread(fix_times), f"{_models.median(fix_times) / base:.2f}"],
            ["host: fetch BN inputs, reduce in numpy (float64)", f"{host_bytes / 1e6:.1f} MB",
             _models.spread(host_times), f"{_models.median(host_times) / base:.2f}"],
        ]
        print(_models.table(["", "fetched per batch", "streaming seconds, median (min-max)", "x forward"], rows))
        print(f"transfer saved: {host_bytes / fix_bytes:,.0f}x fewer bytes per batch "
              f"({host_bytes * len(batches) / 1e9:.2f} GB vs {fix_bytes * len(batches) / 1e6:.2f} MB over the set); "
              f"largest disagreement between the two: {worst:.1e} (mean in std units, variance relative)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
