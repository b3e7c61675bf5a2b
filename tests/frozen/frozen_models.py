"""Helpers of the frozen-graph and --model tests: run freeze_tool.py / slim_net_tool.py in fresh processes.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

import forked

HERE = Path(__file__).resolve().parent
TIMEOUT_SECONDS = 300


def _run(script: str, *args) -> dict:
    command = [sys.executable, str(HERE / script), *map(str, args)]
    result = forked.run(command, timeout=TIMEOUT_SECONDS, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def freeze(jobs: list[tuple], folder: Path) -> None:
    """Freeze fixture checkpoints, one process for all: jobs of ``(model, out path, fold[, training])``
    (see freeze_tool.py)."""
    spec = [{"variant": model.variant, "prefix": model.prefix, "out": str(out), "fold": fold, "training": bool(rest and rest[0])}
            for model, out, fold, *rest in jobs]
    (folder / "jobs.json").write_text(json.dumps(spec))
    _run("freeze_tool.py", folder / "jobs.json")


def frozen_accuracy(graph: Path, model, logits: str = "logits/BiasAdd:0") -> float:
    """Top-1 accuracy of a frozen graph's logits on the fixture's eval set (in this process: a GraphDef
    needs neither tf-slim nor TF1 behaviour)."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.node.extend(graph_nodes(graph))
    with tf.Graph().as_default() as imported:
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=imported) as session:
        values = session.run(logits, {"images:0": np.load(model.eval_x)})
    return float(np.mean(np.argmax(values, axis=1) == np.load(model.eval_y)))


def save_slim_net(net: str, outdir: Path) -> Path:
    """A freshly initialised tf-slim ``net`` saved without .meta into ``outdir``, with calib.npy and
    first_bn_input.npy (see slim_net_tool.py); returns the checkpoint prefix."""
    return Path(_run("slim_net_tool.py", net, outdir)["prefix"])


def graph_nodes(path: Path) -> list:
    """The NodeDefs of a .pb / .pbtxt file."""
    from google.protobuf import text_format
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    if path.suffix == ".pbtxt":
        text_format.Parse(path.read_text(), graph_def)
    else:
        graph_def.ParseFromString(path.read_bytes())
    return list(graph_def.node)


def changed_nodes(before: Path, after: Path) -> dict[str, tuple]:
    """Nodes whose deterministic serialization differs: name -> (before NodeDef, after NodeDef).

    Raises AssertionError if the two graphs do not have the same node names in the same order.
    """
    old, new = graph_nodes(before), graph_nodes(after)
    assert [n.name for n in old] == [n.name for n in new]
    return {
        a.name: (a, b) for a, b in zip(old, new)
        if a.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True)
    }


def const_value(node) -> np.ndarray:
    from tensorflow.python.framework import tensor_util

    return tensor_util.MakeNdarray(node.attr["value"].tensor)
