"""Detect what to feed: the model's input tensor(s) and its training flag.

Any tensor can be fed in a TF1 session, so an input may be a placeholder or the output of an input
pipeline (``IteratorGetNext``, a queue's dequeue) that a training script saved into its ``.meta``. Input
candidates are the float, non-scalar outputs of such ops that the BN layers depend on; a candidate upstream of
another is dropped (feeding the downstream one cuts it off). Training-flag candidates are scalar bool
placeholders the BN layers depend on (the ``tf.cond`` predicate).

One candidate is the input. Several (a multi-input model) are all fed when the calibration data names each
of them (``.npz`` keys or dict keys: ``side``, ``side:0`` or the full scope, see
:func:`ckptfix.data.spec.input_aliases`), or the ones the user lists (``--input a,b``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Sequence

from ckptfix.data.spec import key_for_input
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
    """Names of the tensors fed with calibration batches (one per model input) and of the training flag fed
    False (or None)."""

    inputs: tuple[str, ...]
    training_flag: str | None

    @property
    def input(self) -> str:
        """The input's name; for several inputs, their names joined by commas (the ``--input`` form)."""
        return ",".join(self.inputs)


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


def flag_candidates(index: GraphIndex, layers: list[BatchNormLayer]) -> list[str]:
    """Scalar (or unknown-rank) bool placeholders the layers' normalisation depends on: possible training flags."""
    starts = layer_tensors(index, layers)
    found = []
    for name in sorted(index.ancestors(starts)):
        node = index.nodes[name]
        if node.op in _PLACEHOLDERS:
            dtype, rank = _output_type_and_rank(node, 0)
            if dtype == _BOOL and rank in (0, None):
                found.append(f"{name}:0")
    return found


def input_names(input_name: str | Sequence[str] | None) -> list[str] | None:
    """``--input`` as a list of names: one name, comma-separated names, or a sequence of either."""
    given = [input_name] if isinstance(input_name, str) else list(input_name or [])
    if not given:  # not given (the CLI passes an empty list)
        return None
    names = [name.strip() for text in given for name in text.split(",") if name.strip()]
    if not names:
        raise GraphError("--input is empty: pass a tensor name, or several as --input a,b (or --input a --input b).")
    return names


def _chosen_inputs(index: GraphIndex, names: list[str], candidates: list[str]) -> tuple[str, ...]:
    """The user's ``--input`` names as tensor names, each once."""
    chosen = tuple(dict.fromkeys(_normalise(index, name, "--input", candidates) for name in names))
    if len(chosen) < len(names):
        raise GraphError(f"--input names a tensor twice ({', '.join(names)}): list each input once.")
    return chosen


def _inputs_named_by_data(candidates: list[str], keys: Collection[str] | None) -> tuple[str, ...]:
    """All candidates when the data has a key for each; else GraphError saying what is missing."""
    named = [name for name in candidates if keys and key_for_input(keys, name) is not None]
    if keys and len(named) == len(candidates):
        return tuple(candidates)
    listed = ", ".join(candidates)
    if not named:
        raise GraphError(
            f"several possible inputs ({listed}): pass --input NAME to choose one, or --input {','.join(candidates)} "
            "with data keyed by input name (.npz arrays or dict keys) to feed them all."
        )
    missing = [name for name in candidates if name not in named]
    raise GraphError(
        f"several possible inputs ({listed}) and the data has keys {', '.join(map(str, keys))}, none for "
        f"{', '.join(missing)}: add an array named after each input, or pass --input to choose."
    )


def detect_feeds(
    index: GraphIndex,
    layers: list[BatchNormLayer],
    input_name: str | Sequence[str] | None = None,
    training_flag: str | None = None,
    data_keys: Callable[[], Collection[str] | None] | None = None,
) -> Feeds:
    """The input(s) and training flag to feed; raises GraphError listing candidates when ambiguous.

    ``input_name``: one name, comma-separated names or a list (see :func:`input_names`). ``data_keys``:
    called only when several candidates remain undecided, returns the names the calibration data keys its
    arrays by (or None); every candidate named there is fed.
    """
    inputs = _input_candidates(index, layers)
    names = input_names(input_name)
    if names is not None:
        chosen_inputs = _chosen_inputs(index, names, inputs)
        left_out = [name for name in inputs if name not in chosen_inputs]
        keys = data_keys() if data_keys and left_out else None
        named = [name for name in left_out if keys and key_for_input(keys, name) is not None]
        if named:
            raise GraphError(
                f"the data has arrays for input {', '.join(named)}, which --input leaves out: "
                f"feed it too (--input {','.join(chosen_inputs + tuple(named))}) or remove those arrays."
            )
    elif len(inputs) == 1:
        chosen_inputs = (inputs[0],)
    elif not inputs:
        raise GraphError("found no float input placeholder or pipeline tensor feeding the BN layers: pass --input NAME.")
    else:
        chosen_inputs = _inputs_named_by_data(inputs, data_keys() if data_keys else None)
    flags = flag_candidates(index, layers)
    if training_flag is not None:
        chosen_flag = _normalise(index, training_flag, "--training-flag", flags)
    elif len(flags) <= 1:
        chosen_flag = flags[0] if flags else None
    else:
        raise GraphError(f"several possible training flags ({', '.join(flags)}): pass --training-flag NAME.")
    return Feeds(chosen_inputs, chosen_flag)
