"""Benchmark -- the per-device feed: ``recalibrate`` on 1 and on 2 logical CPU devices of the same CPU.

The same stale tf-slim ResNet-v1-50 checkpoint and the same calibration batches (arrays: no decoding measured)
go through ``ckptfix.recalibrate`` in fresh processes (logical devices can only be set before TensorFlow starts):

* ``1 device``: ``devices=1``, one session, the batches run inline;
* ``2 devices``: the CPU split into two logical devices (``tf.config.set_logical_device_configuration``),
  ``devices=2``: one graph import and one restore per device, whole batches handed to the first free device
  from two threads, results pooled in batch order.

Logical CPU devices share the process's cores and its intra-op thread pool, so this measures what the
per-device machinery costs (a second import and restore, threads, the reorder buffer), not a speedup: real
speedups need devices with their own compute (GPUs). The statistics of the two runs are compared too.
Configurations alternate (ABBA) over ``--runs`` runs; medians reported.

    .venv/bin/python benchmarks/devices.py            # 32x32x3, 1,024 samples, batch 32: ~5 min on 2 loaded cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402


def _child(prefix: str, samples: int, batch_size: int, image_size: int, devices: int, output: Path) -> dict:
    import tensorflow as tf

    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    batches = _models.calibration_batches(samples, image_size, batch_size)
    result = _models.timed_recalibrate(prefix, batches, output, batch_size, devices=devices)
    report = result["report"]
    return {
        "whole": result["whole"],
        "stream": result["stream"],
        "before": result["before"],
        "samples": report.num_samples,
        "devices": [d.to_dict() for d in report.devices],
        "means": [layer.new_mean.tolist() for layer in report.layers],
        "variances": [layer.new_variance.tolist() for layer in report.layers],
    }


def _run(args, prefix: str, devices: int, output: Path) -> dict:
    command = [sys.executable, __file__, "--child", prefix, str(devices), str(output), "--samples", str(args.samples),
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("PREFIX", "DEVICES", "OUTPUT"))
    args = parser.parse_args()
    if args.child:
        prefix, devices, output = args.child
        print(json.dumps(_child(prefix, args.samples, args.batch_size, args.image_size, int(devices), Path(output))))
        return

    folder = Path(tempfile.mkdtemp(prefix="ckptfix-bench-devices-"))
    try:
        info = _models.build_stale_resnet(folder / "train", args.image_size)
        print(f"machine: {_models.machine()}")
        print(f"model: tf-slim ResNet-v1-50, {info['bn_layers']} BN layers; input {args.image_size}x{args.image_size}x3, "
              f"{args.samples} samples in batches of {args.batch_size}")
        results: dict[int, list[dict]] = {1: [], 2: []}
        for run in range(args.runs):
            for devices in ([1, 2] if run % 2 == 0 else [2, 1]):
                results[devices].append(_run(args, info["prefix"], devices, folder / f"out{devices}"))
                last = results[devices][-1]
                print(f"  run {run + 1}, {devices} device(s): stream {last['stream']:.2f} s, whole {last['whole']:.2f} s",
                      flush=True)
        rows = []
        for devices, runs in results.items():
            stream = [r["stream"] for r in runs]
            shares = ", ".join(f"{d['device']} {d['batches']}" for d in runs[-1]["devices"])
            rows.append([f"{devices}", _models.spread(stream), f"{args.samples / _models.median(stream):.0f}",
                         _models.spread([r["before"] for r in runs]), _models.spread([r["whole"] for r in runs]), shares])
        print(_models.table(["logical CPU devices", "streaming s, median (min-max)", "samples/s",
                             "before streaming s (import, restore)", "whole call s", "batches per device"], rows))
        one, two = results[1][0], results[2][0]
        worst = 0.0
        for mean_1, mean_2, var_1, var_2 in zip(one["means"], two["means"], one["variances"], two["variances"]):
            scale = np.sqrt(np.array(var_1)) + 1e-12  # a mean difference in standard deviations
            worst = max(worst, float(np.max(np.abs(np.array(mean_1) - mean_2) / scale)),
                        float(np.max(np.abs(np.array(var_1) - var_2) / np.maximum(var_1, 1e-12))))
        print(f"largest difference of the statistics, 1 vs 2 devices (relative; means in standard deviations): {worst:.2e}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
