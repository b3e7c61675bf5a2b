"""What a graph's saver restores, checked against the checkpoint before the restore runs; and why a restore failed.

TensorFlow's restore op stops at the first entry that does not fit, and says so in words that depend on the op
that failed: ``RestoreV2`` for a dtype (``expected dtype float does not equal original dtype half``) or a
missing key, the ``Assign`` for a shape (``lhs shape= [8] rhs shape= [16]``, no key named), all below a
first line that says nothing (``Graph execution error:``). Reading, on the MetaGraphDef proto, what each
``RestoreV2`` of the saver reads (key, slice) and which variable each output is assigned to (its dtype and
shape), then comparing that with the checkpoint's own dtype and shape per key (:func:`check_restorable`),
names every mismatch the same way, before any session exists, for every command (``inspect`` never restores).

What cannot be known before reading the bytes -- a ``.data`` shard that fails its checksum -- is named after the
restore failed (:func:`restore_error`): the first key TensorFlow's reader cannot read back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ckptfix.errors import CheckpointError, error_reason

_RESTORE_OPS = frozenset({"RestoreV2"})
_ASSIGN_OPS = frozenset({"Assign", "AssignVariableOp"})
_IDENTITY_OPS = frozenset({"Identity", "RefIdentity", "Snapshot"})


@dataclass(frozen=True)
class Restored:
    """One checkpoint entry a saver reads: its ``key``, the dtype it reads it as (the variable's), and the full
    shape the graph expects (None: not checked -- unknown dims, or an assign that does not validate shapes)."""

    key: str
    dtype: object
    shape: tuple[int, ...] | None


def _tensor_name(text: str) -> tuple[str, int]:
    name, _, output = text.lstrip("^").partition(":")
    return name, int(output or 0)


def _known_shape(shape_proto) -> tuple[int, ...] | None:
    dims = tuple(d.size for d in shape_proto.dim)
    return None if shape_proto.unknown_rank or any(d < 0 for d in dims) else dims


def restored_entries(meta_graph) -> list[Restored]:
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
            entries.append(Restored(key.decode(), dtype, shape))
    return entries


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def check_restorable(meta_graph, reader, prefix, graph: str, *, own: bool, other_graph_fix: str) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint ``reader`` reads (at ``prefix``) holds every entry the
    graph's saver restores, with the dtype and shape its variable takes.

    ``graph`` names the graph in the message; ``own``: it is the checkpoint's own (the ``.meta`` written beside it,
    a SavedModel's graph), so a missing key means an incomplete checkpoint; otherwise the graph may be the wrong
    one, and ``other_graph_fix`` says how to give the right one."""
    dtypes, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    entries = {entry.key: entry for entry in restored_entries(meta_graph)}  # one per key (a key's slices agree)
    where = f"checkpoint {prefix}"
    missing = [key for key in entries if key not in dtypes]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        if own:
            raise CheckpointError(f"{where} has no key {missing[0]}{more}, which its own graph ({graph}) restores: "
                                  "the checkpoint is incomplete; restore it from a good copy.")
        raise CheckpointError(f"{where} has no key {missing[0]}{more}, which {graph} restores: the checkpoint is "
                              f"incomplete, or {other_graph_fix}.")
    for key, entry in entries.items():
        stored_dtype, stored_shape = dtypes[key], tuple(shapes[key])
        if entry.dtype != stored_dtype:
            stored, expected = f"as {stored_dtype.name}", f"a {entry.dtype.name} variable"
        elif entry.shape is not None and entry.shape != stored_shape:
            stored, expected = f"with shape {_shape(stored_shape)}", f"a variable of shape {_shape(entry.shape)}"
        else:
            continue
        others = sum(1 for k, e in entries.items() if k != key and (e.dtype != dtypes[k] or e.shape not in (None, tuple(shapes[k]))))
        more = f" (and {others} more entries)" if others else ""
        raise CheckpointError(
            f"{where}: key {key} is stored {stored}, but {graph} restores it into {expected}{more}: the checkpoint "
            f"was changed after saving, or saved from another graph; use the checkpoint as saved, or the graph that saved it."
        )


def _damaged_entry(prefix: str) -> tuple[str, BaseException] | None:
    """The first key (sorted) whose bytes TensorFlow's reader cannot read back (checksum, short read), and the
    error; None if every tensor reads. Reads the checkpoint one tensor at a time: only after a restore failed."""
    import tensorflow as tf

    from ckptfix.io.checkpoint_reader import open_reader

    try:
        reader = open_reader(prefix)
    except (tf.errors.OpError, ValueError):
        return None
    for key in sorted(reader.get_variable_to_dtype_map()):
        try:
            reader.get_tensor(key)
        except (tf.errors.OpError, ValueError, RuntimeError) as error:
            return key, error
    return None


def _shard_file(prefix: str, key: str) -> str:
    """The ``.data`` file holding ``key`` (its name), or "a .data shard" when the index cannot tell."""
    from pathlib import Path

    from ckptfix.io.bundle_index import shard_of_each_tensor

    shard = (shard_of_each_tensor(Path(os.fspath(prefix) + ".index")) or {}).get(key)
    path = Path(os.fspath(prefix))
    found = sorted(path.parent.glob(f"{path.name}.data-{shard:05d}-of-*")) if shard is not None else []
    return found[0].name if found else "a .data shard"


def unreadable_entry(prefix, key: str, error: BaseException) -> CheckpointError:
    """The error for an entry whose bytes cannot be read (``reader.get_tensor`` or a restore failed on it)."""
    reason = error_reason(error)
    # a restore op raises DataLossError, the checkpoint reader a plain OpError (code UNKNOWN): the text tells
    if "Checksum does not match" in reason:
        return CheckpointError(f"checkpoint {prefix}: key {key} fails its checksum in {_shard_file(prefix, key)}: "
                               "the file is corrupt; copy it again from a good source.")
    return CheckpointError(f"cannot read key {key} of checkpoint {prefix} ({reason}): the checkpoint is damaged; "
                           "copy it again from a good source.")


def damaged_error(error: BaseException, prefix) -> CheckpointError:
    """The error for a restore of ``prefix`` that failed with ``DataLossError`` (what :func:`check_restorable`
    cannot see beforehand): the first entry that cannot be read back, named."""
    damaged = _damaged_entry(os.fspath(prefix))
    if damaged is not None:
        return unreadable_entry(prefix, *damaged)
    return CheckpointError(f"checkpoint {prefix} is damaged ({error_reason(error)}): copy it again from a good source.")
