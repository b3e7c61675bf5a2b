"""Freeze a fixture checkpoint to a GraphDef the way deployment pipelines do, and evaluate frozen graphs.

Run as a script in a fresh process (the fixture networks need TF1 behaviour, a process-wide switch)::

    freeze_tool.py freeze VARIANT CKPT_PREFIX OUT [--text] [--fold]
    freeze_tool.py evaluate GRAPH X.npy Y.npy
    freeze_tool.py bn-input GRAPH X.npy TENSOR OUT.npy

``freeze``: the variant's network rebuilt for evaluation (``is_training=False``, input ``images``), restored
from the checkpoint, then ``convert_variables_to_constants`` up to the logits (``--text``: a ``.pbtxt``;
``--fold``: then ``optimize_for_inference``, which folds the BN layers into the convolutions).
``evaluate``: top-1 accuracy of the graph's logits. ``bn-input``: the value of one tensor of the graph over X.
Each prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import slim_models  # noqa: E402

LOGITS = "logits/BiasAdd"


def _load_graph_def(path: Path):
    from google.protobuf import text_format

    graph_def = slim_models.tf.compat.v1.GraphDef()
    if path.suffix == ".pbtxt":
        text_format.Parse(path.read_text(), graph_def)
    else:
        graph_def.ParseFromString(path.read_bytes())
    return graph_def


def freeze(variant, prefix: str, out: Path, text: bool, fold: bool) -> dict:
    tf = slim_models.tf
    with slim_models._seeded_graph() as graph:
        slim_models.build_network(variant, slim_models._images_placeholder(), False, False)
        saver = tf.compat.v1.train.Saver()
    with slim_models._session(graph) as sess:
        saver.restore(sess, prefix)
        frozen = tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), [LOGITS])
    if fold:
        from tensorflow.python.tools import optimize_for_inference_lib

        frozen = optimize_for_inference_lib.optimize_for_inference(
            frozen, ["images"], [LOGITS], tf.float32.as_datatype_enum
        )
    if text:
        out.write_text(str(frozen))
    else:
        out.write_bytes(frozen.SerializeToString())
    return {"nodes": len(frozen.node), "ops": sorted({node.op for node in frozen.node})}


def _run(path: Path, x: np.ndarray, tensor: str) -> np.ndarray:
    tf = slim_models.tf
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(_load_graph_def(path), name="")
    with slim_models._session(graph) as sess:
        return sess.run(graph.get_tensor_by_name(tensor), {graph.get_tensor_by_name("images:0"): x})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    freeze_cmd = commands.add_parser("freeze")
    freeze_cmd.add_argument("variant", choices=sorted(slim_models.VARIANTS))
    freeze_cmd.add_argument("prefix")
    freeze_cmd.add_argument("out", type=Path)
    freeze_cmd.add_argument("--text", action="store_true")
    freeze_cmd.add_argument("--fold", action="store_true")
    eval_cmd = commands.add_parser("evaluate")
    eval_cmd.add_argument("graph", type=Path)
    eval_cmd.add_argument("x", type=Path)
    eval_cmd.add_argument("y", type=Path)
    tensor_cmd = commands.add_parser("bn-input")
    tensor_cmd.add_argument("graph", type=Path)
    tensor_cmd.add_argument("x", type=Path)
    tensor_cmd.add_argument("tensor")
    tensor_cmd.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    slim_models._load_tensorflow(slim_models.VARIANTS[getattr(args, "variant", "seed")])
    if args.command == "freeze":
        result = freeze(slim_models.VARIANTS[args.variant], args.prefix, args.out, args.text, args.fold)
    elif args.command == "evaluate":
        logits = _run(args.graph, np.load(args.x), f"{LOGITS}:0")
        result = {"accuracy": float(np.mean(np.argmax(logits, axis=1) == np.load(args.y)))}
    else:
        value = _run(args.graph, np.load(args.x), args.tensor)
        np.save(args.out, value)
        result = {"shape": list(value.shape)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
