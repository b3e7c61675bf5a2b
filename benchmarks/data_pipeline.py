"""Benchmark: recalibration from a folder of JPEGs vs from the same samples preloaded as an array.

    .venv/bin/python benchmarks/data_pipeline.py [--images 2000] [--size 64] [--runs 3]

Builds (in a child process, TF1 graph) a stale checkpoint of a small conv net on ``size x size x 3`` inputs
-- five 3x3 convolutions (32-32-64-64-128 channels, strides 1-2-1-2-1) each followed by fused BN -- writes
``--images`` random-texture JPEGs, and times ``ckptfix.recalibrate`` end to end (graph import, restore,
streaming, pooling, writing) on (a) the JPEG folder (decoded, resized and preprocessed in the tf.data
pipeline) and (b) the same images decoded beforehand and passed as one float32 array. Runs alternate;
the medians are printed with the machine. The target is (a) <= 1.2 x (b) on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _models import machine  # benchmarks/ is on sys.path when run as a script

CHANNELS = (32, 32, 64, 64, 128)
STRIDES = (1, 2, 1, 2, 1)


def build_model(outdir: Path, size: int) -> str:
    """Save the stale checkpoint (moving statistics 0 / 1, random weights) from a fresh TF1 process."""
    done = subprocess.run([sys.executable, __file__, "--build", str(outdir), "--size", str(size)],
                          check=True, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return done.stdout.strip().splitlines()[-1]


def _build(outdir: Path, size: int) -> None:
    import tensorflow as tf

    from ckptfix.demo import _conv, fused_batch_norm

    tf.compat.v1.disable_v2_behavior()
    tf.compat.v1.set_random_seed(0)
    images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name="images")
    is_training = tf.compat.v1.placeholder_with_default(False, [], name="is_training")
    net = images
    for k, (channels, stride) in enumerate(zip(CHANNELS, STRIDES)):
        net = tf.nn.relu(fused_batch_norm(_conv(net, channels, stride, f"conv{k}"), is_training, f"conv{k}/BatchNorm"))
    tf.identity(tf.reduce_mean(net, [1, 2]), name="features")
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        print(saver.save(session, str(outdir / "model.ckpt"), global_step=0))


def write_jpegs(folder: Path, count: int, size: int) -> None:
    """Smooth random textures (JPEG-friendly, like photos), 90% quality, slightly larger than the input."""
    import tensorflow as tf

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    side = size + size // 4
    for i in range(count):
        coarse = rng.integers(0, 256, (side // 8, side // 8, 3)).astype(np.float32)
        image = tf.image.resize(coarse[None], [side, side], "bicubic")[0] + rng.normal(0, 8, (side, side, 3))
        pixels = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        (folder / f"{i:05d}.jpg").write_bytes(tf.io.encode_jpeg(pixels, quality=90).numpy())


def preload(folder: Path, size: int) -> np.ndarray:
    """The same samples as the pipeline produces (inception preset), decoded up front."""
    import tensorflow as tf

    from ckptfix.data.preprocessing import apply_preset

    return np.stack([
        apply_preset("inception", tf.io.decode_jpeg(p.read_bytes(), channels=3), size, size).numpy()
        for p in sorted(folder.glob("*.jpg"))
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--build", type=Path)
    args = parser.parse_args()
    if args.build:
        return _build(args.build, args.size)

    import ckptfix

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prefix = build_model(root / "train", args.size)
        write_jpegs(root / "jpegs", args.images, args.size)
        array = preload(root / "jpegs", args.size)
        sources = {"JPEG folder (tf.data decode)": root / "jpegs", "preloaded float32 array": array}
        times: dict[str, list[float]] = {name: [] for name in sources}
        for run in range(args.runs + 1):  # run 0 warms up (imports, first graph), not counted
            for name, data in sources.items():
                started = time.perf_counter()
                report = ckptfix.recalibrate(prefix, data, output=root / f"out-{run}-{list(sources).index(name)}",
                                             batch_size=args.batch_size, shuffle=False, agreement_samples=0)
                elapsed = time.perf_counter() - started
                assert report.num_samples == args.images
                if run:
                    times[name].append(elapsed)
        print(f"machine: {machine()}")
        print(f"model: {len(CHANNELS)} conv+fused BN layers on {args.size}x{args.size}x3, "
              f"{args.images} samples, batch {args.batch_size}, median of {args.runs} runs")
        print(f"{'source':32}  {'median s':>8}  {'samples/s':>9}  runs")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:32}  {median:8.2f}  {args.images / median:9.0f}  {', '.join(f'{v:.2f}' for v in values)}")
        a, b = (statistics.median(v) for v in times.values())
        print(f"ratio folder / array: {a / b:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
