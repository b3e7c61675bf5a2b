"""Helpers of the frozen-graph and --model tests: run freeze_tool.py / slim_net_tool.py in fresh processes.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TIMEOUT_SECONDS = 300


def _run(script: str, *args) -> dict:
    command = [sys.executable, str(HERE / script), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def freeze(model, out: Path, *, fold: bool = False) -> Path:
    """Freeze the fixture ``model``'s checkpoint into ``out`` (.pbtxt suffix: text) for evaluation."""
    flags = (["--text"] if out.suffix == ".pbtxt" else []) + (["--fold"] if fold else [])
    _run("freeze_tool.py", "freeze", model.variant, model.prefix, out, *flags)
    return out


def frozen_accuracy(graph: Path, model) -> float:
    """Top-1 accuracy of a frozen graph's logits on the fixture's eval set."""
    return _run("freeze_tool.py", "evaluate", graph, model.eval_x, model.eval_y)["accuracy"]


def save_slim_net(net: str, outdir: Path) -> Path:
    """A freshly initialised tf-slim ``net`` saved without .meta into ``outdir`` (with calib.npy); its prefix."""
    return Path(_run("slim_net_tool.py", "save", net, outdir)["prefix"])


def slim_net_tensor(net: str, prefix: Path, x: Path, tensor: str, out: Path) -> np.ndarray:
    """One tensor of ``net`` built for training and restored from ``prefix``, over the samples in ``x``."""
    _run("slim_net_tool.py", "tensor", net, prefix, x, tensor, out)
    return np.load(out)


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
