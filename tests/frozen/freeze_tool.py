"""Freeze a fixture checkpoint to a GraphDef the way deployment pipelines do.

Run as a script in a fresh process (the fixture networks need TF1 behaviour, a process-wide switch)::

    freeze_tool.py JOBS.json     # [{"variant": ..., "prefix": ..., "out": ..., "fold": bool, "training": bool}, ...]

For each job the variant's network is rebuilt for evaluation (``is_training=False``, input ``images``),
restored from the checkpoint, then ``convert_variables_to_constants`` keeps what the logits need (an ``out``
ending in ``.pbtxt`` is written as text; ``fold``: then ``optimize_for_inference``, which folds the BN
layers into the convolutions; ``training``: the network is built with ``is_training=True`` instead, as a
mistaken export would). Every variant must share the TF1 mode (``disable_v2_behavior``). Prints one
JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import slim_models  # noqa: E402

LOGITS = "logits/BiasAdd"


def freeze(variant, prefix: str, out: Path, text: bool, fold: bool, training: bool = False) -> dict:
    tf = slim_models.tf
    with slim_models._seeded_graph() as graph:
        slim_models.build_network(variant, slim_models._images_placeholder(), training, False)
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


def main(argv) -> int:
    jobs = json.loads(Path(argv[0]).read_text())
    slim_models._load_tensorflow(slim_models.VARIANTS[jobs[0]["variant"]])
    result = [
        freeze(slim_models.VARIANTS[job["variant"]], job["prefix"], Path(job["out"]), job["out"].endswith(".pbtxt"), job["fold"],
               job.get("training", False))
        for job in jobs
    ]
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
