"""Shared helpers of the benchmarks: a stale tf-slim checkpoint, calibration arrays, timing.

The checkpoint is what a user of ckptfix has: a tf-slim training script (``resnet_v1_50``, or
``inception_v3`` without auxiliary logits, with ``is_training=True``, softmax loss, Momentum optimizer whose
train op forgot ``UPDATE_OPS``) saved with
``tf.compat.v1.train.Saver``, so the ``.meta`` holds the whole training graph (gradients, optimizer slots,
update ops, saver). Weights are random (the benchmarks measure time, not accuracy); the moving statistics are
the initial 0 / 1, i.e. stale.

The graph is built in a child process (``python benchmarks/_models.py build ...``) with
``tf.compat.v1.disable_v2_behavior()`` -- TF1 reference variables and Switch/Merge control flow, as in the
scripts ckptfix repairs -- because that switch is process-wide and ckptfix itself runs in an eager process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES = 10


NETS = ("resnet_v1_50", "inception_v3")


def build_stale_resnet(outdir: Path, image_size: int, decay: float = 0.997, flag: str = "python") -> dict:
    """Build and save the stale ResNet-v1-50 training checkpoint in a fresh process; return its description."""
    return build_stale(outdir, image_size, "resnet_v1_50", decay, flag)


def build_stale(outdir: Path, image_size: int, net: str, decay: float = 0.997, flag: str = "python") -> dict:
    """Build and save the stale training checkpoint of ``net`` (one of ``NETS``) in a fresh process; return its
    description. Inception-v3 needs ``image_size >= 75``."""
    command = [sys.executable, __file__, "build", str(outdir), "--image-size", str(image_size),
               "--decay", str(decay), "--flag", flag, "--net", net]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1")
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _build(outdir: Path, image_size: int, decay: float, flag: str, net: str) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import slim_compat  # noqa: F401  (tf-slim 1.1.0 under TF 2.21)
    import tensorflow as tf
    import tf_slim as slim
    from tf_slim.nets import inception_v3, resnet_v1

    tf.compat.v1.disable_v2_behavior()
    tf.compat.v1.set_random_seed(0)
    images = tf.compat.v1.placeholder(tf.float32, [None, image_size, image_size, 3], name="images")
    labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
    if flag == "placeholder":
        is_training = tf.compat.v1.placeholder_with_default(False, [], name="is_training")
    else:
        is_training = True
    if net == "inception_v3":
        with slim.arg_scope(inception_v3.inception_v3_arg_scope(batch_norm_decay=decay)):
            logits, _ = inception_v3.inception_v3(images, num_classes=NUM_CLASSES, is_training=is_training,
                                                  create_aux_logits=False)
    else:
        with slim.arg_scope(resnet_v1.resnet_arg_scope(batch_norm_decay=decay)):
            logits, _ = resnet_v1.resnet_v1_50(images, num_classes=NUM_CLASSES, is_training=is_training)
        logits = tf.squeeze(logits, [1, 2])
    logits = tf.identity(logits, name="logits")
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    global_step = tf.compat.v1.train.get_or_create_global_step()
    # The bug ckptfix repairs: the train op does not depend on tf.GraphKeys.UPDATE_OPS.
    train_op = tf.compat.v1.train.MomentumOptimizer(0.01, 0.9).minimize(loss, global_step=global_step)
    tf.compat.v1.add_to_collection("train_op", train_op)
    saver = tf.compat.v1.train.Saver()
    update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    outdir.mkdir(parents=True, exist_ok=True)
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        prefix = saver.save(session, str(outdir / "model.ckpt"), global_step=0)
    variables = tf.compat.v1.global_variables()
    return {
        "prefix": prefix,
        "input": images.name,
        "logits": logits.name,
        "training_flag": None if flag == "python" else is_training.name,
        "update_ops": [op.name for op in update_ops],
        "bn_layers": len(update_ops) // 2,
        "variables": len(variables),
        "parameters": int(sum(np.prod(v.shape.as_list()) for v in tf.compat.v1.trainable_variables())),
        "checkpoint_mb": round(sum(f.stat().st_size for f in outdir.glob("model.ckpt-0.data*")) / 2**20, 1),
    }


def calibration_batches(num_samples: int, image_size: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """Preprocessed calibration data (float32, Inception scaling range), already split into batches.

    Natural-image-like statistics are irrelevant to the timing; the values are smooth noise with a non-zero
    mean per channel so that the statistics are not trivially 0 / 1.
    """
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((num_samples, image_size, image_size, 3), dtype=np.float32) * 0.5
    data += np.array([0.2, -0.1, 0.3], np.float32)
    return [data[start : start + batch_size] for start in range(0, num_samples, batch_size)]


def machine() -> str:
    """One line describing the machine: CPU model, core count, TensorFlow version and devices."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    devices = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, {devices}, TensorFlow {tf.__version__}, "
            f"Python {platform.python_version()}, load average {load:.2f} at start")


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """``median (min-max)`` formatted for a table cell."""
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def timed_recalibrate(prefix: str, batches, output: Path, batch_size: int, **options) -> dict:
    """Run ``ckptfix.recalibrate`` on ``batches``; seconds of the whole call and of its streaming part.

    The streaming part runs from the first batch ckptfix asks for (graph imported and checkpoint restored) to
    the return of its last ``GraphModel.moments`` (every batch forwarded and merged but the last merge, a few
    microseconds). The data layer reads ahead of the forward pass, so the end is taken from ``moments``, which is
    wrapped here with a clock and nothing else.
    """
    import ckptfix
    from ckptfix.graph.model import GraphModel

    marks = {}

    def stream():
        marks["first"] = time.perf_counter()
        yield from batches

    original = GraphModel.moments

    def moments(self, batch, output=None):
        result = original(self, batch, output)
        marks["last"] = time.perf_counter()
        return result

    options.setdefault("agreement_samples", 0)
    GraphModel.moments = moments
    try:
        start = time.perf_counter()
        report = ckptfix.recalibrate(prefix, stream(), output=output, shuffle=False, overwrite=True,
                                     batch_size=batch_size, **options)
        end = time.perf_counter()
    finally:
        GraphModel.moments = original
    return {
        "whole": end - start,
        "stream": marks["last"] - marks["first"],
        "before": marks["first"] - start,
        "after": end - marks["last"],
        "report": report,
    }


def forward_baseline(info: dict, batches: list[np.ndarray]) -> dict:
    """The limit: a plain training-mode forward pass of the saved graph over ``batches`` (logits fetched).

    The user's own ``.meta`` imported as is, restored with its saver, then one ``session.run`` per batch; the
    first run (graph optimisation, memory allocation) is counted, as it is in ckptfix's streaming part.
    """
    import tensorflow as tf

    graph = tf.Graph()
    start = time.perf_counter()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(info["prefix"] + ".meta", clear_devices=True)
        session = tf.compat.v1.Session(graph=graph)
        saver.restore(session, info["prefix"])
        logits = graph.get_tensor_by_name(info["logits"])
        images = graph.get_tensor_by_name(info["input"])
    loop = time.perf_counter()
    for batch in batches:
        session.run(logits, {images: batch})
    end = time.perf_counter()
    session.close()
    return {"setup": loop - start, "forward": end - loop}


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build")
    build.add_argument("outdir", type=Path)
    build.add_argument("--image-size", type=int, default=96)
    build.add_argument("--decay", type=float, default=0.997)
    build.add_argument("--flag", choices=["python", "placeholder"], default="python")
    build.add_argument("--net", choices=NETS, default="resnet_v1_50")
    args = parser.parse_args()
    print(json.dumps(_build(args.outdir, args.image_size, args.decay, args.flag, args.net)))
