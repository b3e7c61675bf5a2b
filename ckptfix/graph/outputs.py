"""Find the model's output (final logits or probabilities) in an imported graph, for output-agreement checks.

Candidates are float tensors of static shape ``(batch, K)`` with ``K > 1`` produced by a classifier-head op
(``BiasAdd``, ``MatMul``, ``Softmax``, ...) downstream of the input, outside ``gradients`` scopes, not fed by
a loss, and computable from what is fed: a tensor that needs a placeholder or an input-pipeline op (queue,
iterator, reader) the calibration data does not feed -- labels -- is not the model's output. Among them, those
with no other candidate downstream are final. Final candidates that are one tensor seen through activations
and reshapes (logits and the softmax / sigmoid of them) are one output: the logits. Siblings computed from
the same tensor through reshapes / squeezes and a monotone activation (a 4-D logits tensor feeding both
``predictions/Softmax`` and the ``Squeeze`` a loss reads) are one output too: the one through the activation,
the predictions a user reads. Several outputs left are narrowed to the one whose name says ``logits`` (not
``aux``). Otherwise nothing is chosen and the caller asks for ``--output-tensor``.
"""

from __future__ import annotations

from ckptfix.errors import GraphError
from ckptfix.graph.index import is_gradient

_HEAD_OPS = frozenset({"BiasAdd", "MatMul", "Softmax", "Sigmoid", "Squeeze", "Reshape", "Add", "AddV2", "Identity"})
_SAME_OUTPUT_OPS = frozenset({"Softmax", "Sigmoid", "Reshape", "Squeeze", "Identity"})
_ACTIVATION_OPS = frozenset({"Softmax", "Sigmoid"})
_UNFED_SOURCES = ("Placeholder", "Dequeue", "IteratorGetNext", "ReaderRead")


def _needs_unfed_input(tensor, fed: set[str]) -> bool:
    """Whether computing ``tensor`` needs a placeholder or input-pipeline op that is not fed (labels)."""
    seen, stack = set(), [tensor]
    while stack:
        current = stack.pop()
        if current.name in fed or current.op.name in seen:
            continue
        seen.add(current.op.name)
        op = current.op
        if any(source in op.type for source in _UNFED_SOURCES) and op.type != "PlaceholderWithDefault":
            return True
        stack.extend(op.inputs)
    return False


def _same_output_root(tensor, names: set[str]):
    """The candidate ``tensor`` is computed from through activations and reshapes only (itself if none)."""
    root, current = tensor, tensor
    while current.op.type in _SAME_OUTPUT_OPS and current.op.inputs:
        current = current.op.inputs[0]
        if current.name in names:
            root = current
    return root


def _same_output_base(tensor) -> tuple[object, bool]:
    """The tensor ``tensor`` is computed from through activations and reshapes only, whether or not it is a
    candidate (a 4-D logits tensor is not), and whether an activation is on that path."""
    current, activated = tensor, False
    while current.op.type in _SAME_OUTPUT_OPS and current.op.inputs:
        activated = activated or current.op.type in _ACTIVATION_OPS
        current = current.op.inputs[0]
    return current, activated


def _forward_ops(graph, input_tensor) -> list:
    """Ops reachable from the input(s) through data edges, backprop and ckptfix's own ops left out, in graph order."""
    seen, stack = set(), [t.op for t in (input_tensor if isinstance(input_tensor, (list, tuple)) else [input_tensor])]
    while stack:
        op = stack.pop()
        if op.name in seen or is_gradient(op.name) or op.name.startswith("ckptfix/"):
            continue
        seen.add(op.name)
        for output in op.outputs:
            stack.extend(output.consumers())
    return [op for op in graph.get_operations() if op.name in seen]


def _is_loss(op) -> bool:
    return "CrossEntropy" in op.type or "loss" in op.name.lower().split("/")[0]


def detect_output(graph, input_tensor, fed=()) -> list[str]:
    """Names of the final output candidates (one element when the output is clear). ``input_tensor``: the
    input, or a list of the model's inputs; ``fed``: every other tensor fed (the training flag)."""
    inputs = list(input_tensor) if isinstance(input_tensor, (list, tuple)) else [input_tensor]
    fed_names = {t.name for t in [*inputs, *fed]}
    ops = _forward_ops(graph, input_tensor)
    after_loss: set[str] = set()
    for op in ops:
        if _is_loss(op) or any(i.op.name in after_loss for i in op.inputs):
            after_loss.add(op.name)
    candidates = []
    for op in ops:
        if op.type not in _HEAD_OPS or op.name in after_loss or not op.outputs:
            continue
        tensor = op.outputs[0]
        dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
        if tensor.dtype.base_dtype.is_floating and dims is not None and len(dims) == 2 and (dims[1] or 0) > 1 \
                and not _needs_unfed_input(tensor, fed_names):
            candidates.append(tensor)
    names = {t.name for t in candidates}
    final = [t for t in candidates if not (_downstream_names(t, names) - {t.name})]
    roots = {_same_output_root(t, names).name: _same_output_root(t, names) for t in final}
    if len(roots) == 1:  # logits and their softmax: one output, the logits
        final = list(roots.values())
    elif len({_same_output_base(t)[0].name for t in final}) == 1:  # siblings of one tensor: the predictions
        activated = [t for t in final if _same_output_base(t)[1]]
        final = activated if len(activated) == 1 else final
    if len(final) > 1:
        logits = [t for t in final if "logits" in t.name.lower() and "aux" not in t.name.lower()]
        final = logits if len(logits) == 1 else final
    return [t.name for t in final]


def _downstream_names(tensor, wanted: set[str]) -> set[str]:
    found, seen, stack = set(), set(), [tensor.op]
    while stack:
        op = stack.pop()
        if op.name in seen or is_gradient(op.name):
            continue
        seen.add(op.name)
        for output in op.outputs:
            if output.name in wanted:
                found.add(output.name)
            stack.extend(output.consumers())
    return found


def resolve_output(graph, input_tensor, name: str | None, fed=()) -> tuple[str | None, str | None]:
    """``(output tensor name, notice)``: the user's ``--output-tensor`` (validated) or the detected one
    (``fed``: the other fed tensors, see :func:`detect_output`)."""
    if name is not None:
        full = name if ":" in name else f"{name}:0"
        try:
            graph.get_tensor_by_name(full)
        except (KeyError, ValueError):
            raise GraphError(f"--output-tensor {name}: no such tensor in the graph.") from None
        return full, None
    found = detect_output(graph, input_tensor, fed)
    if len(found) == 1:
        return found[0], None
    listed = f" (candidates: {', '.join(found[:5])})" if found else ""
    return None, f"no single output tensor found{listed}: pass --output-tensor NAME for output agreement figures"
