"""Benchmark -- the cost of the accurate per-batch moments (issue 14 item 7) against the fetch they replace.

On the stale tf-slim Inception-v3 training checkpoint of ``api_vs_eval.py`` (94 fused BN layers), one
``GraphModel`` (the rewritten graph, imported and restored once) runs the same calibration batches in batch mode
three ways, interleaved batch by batch in one session so that machine load hits all alike:

* forward: the output (logits) alone -- the forward pass on batch statistics, nothing else fetched;
* fused fetch (before): the output and every fused node's own outputs 1 and 2 (batch mean, Bessel variance),
  what ckptfix fetched before: float32 sums accumulated one value after another;
* both products: the output and, per BN input, the shifted sums ``sum(x - m)``, ``sum((x - c)**2)`` as matrix
  products with ones (``m``: the fused node's own mean, ``c`` the center), the route above
  ``FUSED_SQUARES_MAX_COUNT`` values per channel per batch;
* now: ``GraphModel.moments(batch, output)``: the route the batch's size takes (at 75x75 every layer is below
  the threshold: one product for ``s1``, the squares from the fused node's own variance).

Per side: the sum over batches of each batch's seconds (median of ``--runs`` passes over the batches, the first
pass, with graph optimisation, left out), and the ratio to the forward side.

    PYTHONPATH=. .venv/bin/python benchmarks/accurate_moments.py                    # 75x75x3, 512 samples
    PYTHONPATH=. .venv/bin/python benchmarks/accurate_moments.py --image-size 150
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=75)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from ckptfix import _quiet

    _quiet.silence_tensorflow()
    from ckptfix.graph.batchnorm import find_batchnorm_layers
    from ckptfix.graph.feeds import detect_feeds
    from ckptfix.graph.index import GraphIndex
    from ckptfix.graph.meta import load_meta_graph
    from ckptfix.graph.model import GraphModel

    print(f"machine: {_models.machine()}")
    folder = Path(tempfile.mkdtemp(prefix="ckptfix-bench-moments-"))
    try:
        info = _models.build_stale(folder / "train", args.image_size, "inception_v3")
        batches = _models.calibration_batches(args.samples, args.image_size, args.batch_size)
        meta_graph = load_meta_graph(info["prefix"] + ".meta")
        index = GraphIndex(meta_graph.graph_def)
        layers = find_batchnorm_layers(index)
        with GraphModel(meta_graph, layers, detect_feeds(index, layers, None, None), info["prefix"]) as model:
            output = model.graph.get_tensor_by_name(info["logits"])
            fused = [model.graph.get_operation_by_name(node.node).outputs[k]
                     for layer in layers for node in layer.fused_nodes for k in (1, 2)
                     if node.function is None and not (node.is_training and model.training_flag is not None)]
            feed = model.inputs + ([model.training_flag] if model.training_flag is not None else [])
            forward = model.session.make_callable([output], feed_list=feed)
            before = model.session.make_callable([output] + fused, feed_list=feed)

            def call(run):
                return lambda batch: run(batch) if model.training_flag is None else run(batch, False)

            products = tuple(True for _ in model._sums)  # the matrix-product route for every BN input
            sides = {"forward (output only)": call(forward), "fused fetch (before)": call(before),
                     "both products": lambda batch: model._run([batch], info["logits"], products),
                     "now": lambda batch: model.moments(batch, info["logits"])}
            seconds = {name: [] for name in sides}
            for run in range(args.runs + 1):
                totals = dict.fromkeys(sides, 0.0)
                for k, batch in enumerate(batches):
                    order = list(sides) if (run + k) % 2 == 0 else list(reversed(sides))
                    for name in order:
                        start = time.perf_counter()
                        sides[name](batch)
                        totals[name] += time.perf_counter() - start
                if run:  # the first pass optimises the graph for each fetch list
                    for name, total in totals.items():
                        seconds[name].append(total)
        base = _models.median(seconds["forward (output only)"])
        print(f"model: tf-slim Inception-v3, {len(layers)} BN layers ({len(fused) // 2} fused nodes read); "
              f"input {args.image_size}x{args.image_size}x3, {args.samples} samples in batches of {args.batch_size}")
        rows = [[name, _models.spread(values), f"{_models.median(values) / base:.3f}"] for name, values in seconds.items()]
        print(_models.table(["batch mode, fetched", "seconds per pass, median (min-max)", "x forward"], rows))
        print(f"{args.runs} passes after a warm-up pass; the sides alternate batch by batch.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
