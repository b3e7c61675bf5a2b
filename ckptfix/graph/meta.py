"""Read a ``.meta`` MetaGraphDef and what it says about checkpoint keys and partitioned variables."""

from __future__ import annotations

from pathlib import Path

from ckptfix.io.checkpoint_reader import TensorSlice
from ckptfix.errors import GraphError

_VARIABLE_COLLECTIONS = ("variables", "local_variables", "model_variables", "trainable_variables")


_META_FIX = "pass --meta with the graph the checkpoint was saved from"


def load_meta_graph(path: Path, fix: str = _META_FIX):
    """Parse a binary MetaGraphDef; raises GraphError (ending with ``fix``) when the file is not one."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import meta_graph_pb2

    meta_graph = meta_graph_pb2.MetaGraphDef()
    try:
        meta_graph.ParseFromString(Path(path).read_bytes())
    except (DecodeError, RuntimeError):
        raise GraphError(f"{path} is not a TensorFlow .meta graph: {fix}.") from None
    if not meta_graph.graph_def.node:
        raise GraphError(f"{path} holds an empty graph: {fix}.")
    return meta_graph


def _variable_defs(meta_graph):
    from tensorflow.core.framework import variable_pb2

    seen = set()
    for collection in _VARIABLE_COLLECTIONS:
        if collection not in meta_graph.collection_def:
            continue
        for raw in meta_graph.collection_def[collection].bytes_list.value:
            definition = variable_pb2.VariableDef.FromString(raw)
            if definition.variable_name not in seen:
                seen.add(definition.variable_name)
                yield definition


def checkpoint_keys(meta_graph) -> dict[str, str]:
    """Variable op name -> checkpoint key (the partitioned variable's full name for its ``part_k`` ops)."""
    keys = {}
    for definition in _variable_defs(meta_graph):
        op_name = definition.variable_name.split(":")[0]
        info = definition.save_slice_info_def
        keys[op_name] = info.full_name if info.full_name else op_name
    return keys


def partition_layout(meta_graph) -> dict[str, list[TensorSlice]]:
    """Checkpoint key -> the slices Saver wrote it in, for partitioned variables (spec ``"full off,len:..."``)."""
    layout: dict[str, list[TensorSlice]] = {}
    for definition in _variable_defs(meta_graph):
        info = definition.save_slice_info_def
        if not info.full_name:
            continue
        spec = " ".join(str(d) for d in info.full_shape) + " " + ":".join(
            f"{o},{n}" for o, n in zip(info.var_offset, info.var_shape)
        )
        layout.setdefault(info.full_name, []).append(
            TensorSlice(spec, tuple(info.var_offset), tuple(info.var_shape))
        )
    return {key: sorted(parts, key=lambda part: part.offsets) for key, parts in layout.items()}
