"""What a graph's saver restores, checked against the checkpoint before the restore runs; and why a restore failed.

TensorFlow's restore op stops at the first entry that does not fit, and says so in words that depend on the op
that failed: ``RestoreV2`` for a dtype (``expected dtype float does not equal original dtype half``) or a
missing key, the ``Assign`` for a shape (``lhs shape= [8] rhs shape= [16]``, no key named), all below a
first line that says nothing (``Graph execution error:``). Reading, on the MetaGraphDef proto, what each
``RestoreV2`` of the saver reads (key, slice) and which variable each output is assigned to (its dtype and
shape), then comparing that with the checkpoint's own dtype and shape per key (:func:`check_restorable`),
names every mismatch the same way, before any session exists, for every command (``inspect`` never restores).

What cannot be known before reading the bytes -- a ``.data`` shard that fails its checksum -- is named after the
restore failed (:func:`ckptfix.io.checkpoint_reader.damaged_error`): the first key that cannot be read back.
"""

from __future__ import annotations

from ckptfix.io.checkpoint_reader import Expected, check_expected

_RESTORE_OPS = frozenset({"RestoreV2"})
_ASSIGN_OPS = frozenset({"Assign", "AssignVariableOp"})
_IDENTITY_OPS = frozenset({"Identity", "RefIdentity", "Snapshot"})


def _tensor_name(text: str) -> tuple[str, int]:
    name, _, output = text.lstrip("^").partition(":")
    return name, int(output or 0)


def _known_shape(shape_proto) -> tuple[int, ...] | None:
    dims = tuple(d.size for d in shape_proto.dim)
    return None if shape_proto.unknown_rank or any(d < 0 for d in dims) else dims


def restored_entries(meta_graph) -> list[Expected]:
    """Every entry the saver's restore op (``saver_def.restore_op_name``) reads with ``RestoreV2``, in the graph's
    order; empty without a saver. A restore whose key list is not a constant is left out (nothing to compare)."""
    import tensorflow as tf

    restore_op = meta_graph.saver_def.restore_op_name
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    if restore_op not in nodes:
        return []
    needed, stack = set(), [restore_op]
    while stack:  # the restore op's ancestors: its RestoreV2 and assign ops
        name = stack.pop()
        if name in needed or name not in nodes:
            continue
        needed.add(name)
        stack.extend(_tensor_name(text)[0] for text in nodes[name].input)

    def through_identity(text: str) -> tuple[str, int]:
        name, output = _tensor_name(text)
        while name in nodes and nodes[name].op in _IDENTITY_OPS:
            name, output = _tensor_name(nodes[name].input[0])
        return name, output

    variables = {}  # (RestoreV2 name, output) -> (variable NodeDef, whether its assign validates the shape)
    for name in needed:
        node = nodes[name]
        if node.op in _ASSIGN_OPS and len(node.input) >= 2:
            variable = nodes.get(through_identity(node.input[0])[0])
            # a TF1 Variable(validate_shape=False) takes any shape; a resource variable's declared shape is checked
            validates = not (node.op == "Assign" and "validate_shape" in node.attr and not node.attr["validate_shape"].b)
            variables[through_identity(node.input[1])] = (variable, validates)
    entries = []
    for node in meta_graph.graph_def.node:
        name = node.name
        if name not in needed or node.op not in _RESTORE_OPS or len(node.input) < 3:
            continue
        constants = [nodes.get(through_identity(text)[0]) for text in node.input[1:3]]
        if any(const is None or const.op != "Const" for const in constants):
            continue
        keys, specs = (tf.make_ndarray(const.attr["value"].tensor).reshape(-1) for const in constants)
        for k, (key, spec) in enumerate(zip(keys, specs)):
            dtype = tf.as_dtype(node.attr["dtypes"].list.type[k])
            variable, validates = variables.get((name, k), (None, False))
            shape = None
            if variable is not None and "dtype" in variable.attr:
                dtype = tf.as_dtype(variable.attr["dtype"].type)
                if validates and "shape" in variable.attr:
                    shape = _known_shape(variable.attr["shape"].shape)
            spec = spec.decode()
            if spec:  # a slice of a partitioned variable: "<full shape> <slice>"; the key holds the full shape
                shape = tuple(int(d) for d in spec.split(" ")[:-1])
            entries.append(Expected(key.decode(), dtype, shape))
    return entries


def check_restorable(meta_graph, reader, prefix, graph: str, *, own: bool, other_graph_fix: str = "") -> None:
    """Raise :class:`~ckptfix.errors.CheckpointError` unless the checkpoint ``reader`` reads (at ``prefix``) holds
    every entry the graph's saver restores, with the dtype and shape its variable takes.

    ``graph`` names the graph in the message; ``own``: it is the checkpoint's own (the ``.meta`` written beside it,
    a SavedModel's graph), so a missing key means an incomplete checkpoint; otherwise the graph may be the wrong
    one, and ``other_graph_fix`` says how to give the right one."""
    if own:
        restorer, missing_fix = f"its own graph ({graph})", "the checkpoint is incomplete; restore it from a good copy"
    else:
        restorer, missing_fix = graph, f"the checkpoint is incomplete, or {other_graph_fix}"
    check_expected(reader, prefix, restored_entries(meta_graph), restorer, missing_fix,
                   "the checkpoint was changed after saving, or saved from another graph; use the checkpoint as saved, "
                   "or the graph that saved it")
