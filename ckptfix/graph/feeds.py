"""Detect what to feed: the model's input tensor and its training flag.

Any tensor can be fed in a TF1 session, so the input may be a placeholder or the output of an input
pipeline (``IteratorGetNext``, a queue's dequeue) that a training script saved into its ``.meta``. Input
candidates are the float, non-scalar outputs of such ops that the BN layers depend on; a candidate upstream of
another is dropped (feeding the downstream one cuts it off). Training-flag candidates are scalar bool
placeholders the BN layers depend on (the ``tf.cond`` predicate).
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptfix.errors import GraphError
from ckptfix.graph.batchnorm import BatchNormLayer, layer_tensors
from ckptfix.graph.index import GraphIndex, Tensor, parse_input

_PLACEHOLDERS = frozenset({"Placeholder", "PlaceholderWithDefault"})
_PIPELINE_OUTPUTS = frozenset(
    {"IteratorGetNext", "QueueDequeue", "QueueDequeueV2", "QueueDequeueMany", "QueueDequeueManyV2",
     "QueueDequeueUpTo", "QueueDequeueUpToV2"}
)
_FLOAT_TYPES = frozenset({1, 2, 14, 19})  # DT_FLOAT, DT_DOUBLE, DT_BFLOAT16, DT_HALF
_BOOL = 10


@dataclass(frozen=True)
class Feeds:
    """Names of the tensor fed with calibration batches and of the training flag fed False (or None)."""

    input: str
    training_flag: str | None


def _output_type_and_rank(node, k: int) -> tuple[int | None, int | None]:
    """(dtype enum, rank or None if unknown) of output ``k`` of an input-producing node."""
    if node.op in _PLACEHOLDERS:
        shape = node.attr["shape"].shape
        return node.attr["dtype"].type, None if shape.unknown_rank else len(shape.dim)
    if node.op == "IteratorGetNext":
        types, shapes = node.attr["output_types"].list.type, node.attr["output_shapes"].list.shape
        if k >= len(types):
            return None, None
        shape = shapes[k] if k < len(shapes) else None
        return types[k], None if shape is None or shape.unknown_rank else len(shape.dim)
    types = node.attr["component_types"].list.type
    return (types[k] if k < len(types) else None), None


def _consumed_tensors(index: GraphIndex, nodes: set[str], extra: list[Tensor]) -> set[str]:
    names = {t.name for t in extra}
    for name in nodes:
        names.update(t.name for t in index.inputs(index.nodes[name]))
    return names


def _normalise(index: GraphIndex, name: str, what: str, candidates: list[str]) -> str:
    tensor = parse_input(name)
    if tensor is None or tensor.node not in index.nodes:
        listed = ", ".join(candidates) or "none found"
        raise GraphError(f"{what} {name}: no such tensor in the graph (candidates: {listed}).")
    return tensor.name


def _input_candidates(index: GraphIndex, layers: list[BatchNormLayer]) -> list[str]:
    starts = [t for layer in layers for t in layer.inputs]
    upstream = index.ancestors(starts)
    found = []
    for tensor_name in sorted(_consumed_tensors(index, upstream, starts)):
        node_name, k = tensor_name.rsplit(":", 1)
        node = index.nodes.get(node_name)
        if node is None or node.op not in _PLACEHOLDERS | _PIPELINE_OUTPUTS:
            continue
        dtype, rank = _output_type_and_rank(node, int(k))
        if dtype in _FLOAT_TYPES and rank != 0:
            found.append(tensor_name)
    # drop candidates that feed another candidate
    return [
        name for name in found
        if not any(name.split(":")[0] in index.ancestors([parse_input(other)]) for other in found if other != name)
    ]


def _flag_candidates(index: GraphIndex, layers: list[BatchNormLayer]) -> list[str]:
    starts = layer_tensors(index, layers)
    found = []
    for name in sorted(index.ancestors(starts)):
        node = index.nodes[name]
        if node.op in _PLACEHOLDERS:
            dtype, rank = _output_type_and_rank(node, 0)
            if dtype == _BOOL and rank in (0, None):
                found.append(f"{name}:0")
    return found


def detect_feeds(
    index: GraphIndex, layers: list[BatchNormLayer], input_name: str | None = None, training_flag: str | None = None
) -> Feeds:
    """The input and training flag to feed; raises GraphError listing candidates when ambiguous."""
    inputs = _input_candidates(index, layers)
    if input_name is not None:
        chosen_input = _normalise(index, input_name, "--input", inputs)
    elif len(inputs) == 1:
        chosen_input = inputs[0]
    elif not inputs:
        raise GraphError("found no float input placeholder or pipeline tensor feeding the BN layers: pass --input NAME.")
    else:
        raise GraphError(f"several possible inputs ({', '.join(inputs)}): pass --input NAME to choose one.")
    flags = _flag_candidates(index, layers)
    if training_flag is not None:
        chosen_flag = _normalise(index, training_flag, "--training-flag", flags)
    elif len(flags) <= 1:
        chosen_flag = flags[0] if flags else None
    else:
        raise GraphError(f"several possible training flags ({', '.join(flags)}): pass --training-flag NAME.")
    return Feeds(chosen_input, chosen_flag)
