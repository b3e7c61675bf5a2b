"""Any TF2 SavedModel as one TF1-style graph: the chosen signature's functions inlined into the top level, its
captured variables mapped to their keys in ``variables/``, and a restore op reading them from there.

A TF2 SavedModel keeps its computation in functions: the serving graph's top level holds one placeholder per
signature input, a ``StatefulPartitionedCall`` of the signature's function, and one ``VarHandleOp`` per
captured variable. :func:`load_signature_graph` turns it into a MetaGraphDef that
:class:`~ckptfix.graph.model.GraphModel` takes like any TF1 graph:

* only the signature's call and what it reads are kept, so BN layers traced into other signatures or
  functions (Keras 2 SavedModels keep training and inference variants of every layer) are never seen;
* grappler's function optimizer inlines the call and the calls nested in it (``StatefulPartitionedCall`` /
  ``PartitionedCall``), the way ``convert_to_constants`` does, with ``If`` / ``While`` kept un-lowered so that
  BN under ``tf.cond`` stays in branch functions (:mod:`ckptfix.graph.model` handles the else branches);
* the variables are mapped through the object graph, which is what ``tf.saved_model.load`` trusts: the
  signature function's ``bound_inputs`` (saved-object ids of its captures, in the call's trailing inputs'
  order) -> the object's path from the root -> the same path in the checkpoint's object graph -> the
  ``VARIABLE_VALUE`` key. The handles' own names and the SavedModel's saver are not used: in a Keras 3
  ``model.export()`` the serving function captures handles that its saver never restores;
* handles of one checkpoint key are merged into one, so a statistic read in several places is one layer;
* a restore op (``ckptfix/restore/all``, fed the prefix at ``ckptfix/restore/filename``) assigns every captured
  variable from ``variables/variables`` with one ``RestoreV2``; the MetaGraphDef's ``saver_def`` names it.

A TF1 SavedModel (``tf.compat.v1.saved_model`` builder: signatures on plain graph tensors) needs none of this:
its graph, its saver and its variable collections' keys are used as they are, as for a checkpoint's ``.meta``.

The caller's protos are never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ckptfix.errors import CheckpointError, GraphError
from ckptfix.graph.meta import checkpoint_keys, partition_layout

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
_CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
_CONTROL_FLOW_OPS = frozenset({"If", "StatelessIf", "While", "StatelessWhile"})
_RESTORE = "ckptfix/restore"


@dataclass
class SignatureGraph:
    """A SavedModel's signature as one graph (module docstring).

    ``meta_graph``: the inlined graph with its restore op (``saver_def``); for a TF1 SavedModel (signatures
    on plain graph tensors), its own graph and saver. ``inputs`` / ``outputs``: signature key -> tensor name
    in it. ``variable_keys``: variable op name -> checkpoint key. ``layout``: partitioned variables' slices
    (TF1 only, see :func:`ckptfix.graph.meta.partition_layout`).
    """

    path: Path
    signature_name: str
    meta_graph: object
    inputs: dict[str, str]
    outputs: dict[str, str]
    variable_keys: dict[str, str]
    layout: dict = field(default_factory=dict)


def is_saved_model(path) -> bool:
    path = Path(path).expanduser()
    return path.is_dir() and (path / "saved_model.pb").is_file()


def read_saved_model(path: Path):
    """The ``SavedModel`` proto of ``path/saved_model.pb``."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except (DecodeError, OSError) as error:
        raise CheckpointError(f"cannot read {path / 'saved_model.pb'} ({error}): restore it from a good copy.") from None
    return proto


def serving_meta_graph(saved_model, path: Path):
    """The MetaGraphDef tagged ``serve`` (or the only one)."""
    graphs = list(saved_model.meta_graphs)
    tagged = [g for g in graphs if SERVE_TAG in g.meta_info_def.tags]
    if tagged or len(graphs) == 1:
        return (tagged or graphs)[0]
    raise GraphError(f"SavedModel {path} has no meta graph tagged '{SERVE_TAG}': re-export it with the serve tag.")


def _call_node(graph_def, signature):
    """The top-level function call all of the signature's outputs come from; None for a TF1 SavedModel."""
    nodes = {node.name: node for node in graph_def.node}
    callers = {tensor.name.split(":")[0] for tensor in signature.outputs.values()}
    node = nodes.get(callers.pop()) if len(callers) == 1 else None
    return node if node is not None and node.op in _CALL_OPS else None


def _checkpoint_keys(meta_graph, reader, path: Path) -> dict[int, str]:
    """Saved-object id -> the checkpoint key of its value, for every saved variable.

    Both object graphs are walked from their roots together, along children of the same local name, so an
    object is matched through any path the two graphs share (the saved one also holds functions, signatures)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    if not reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"):
        raise CheckpointError(f"{path}/variables has no object graph: it is not a TF2 SavedModel's checkpoint.")
    checkpoint = trackable_object_graph_pb2.TrackableObjectGraph()
    checkpoint.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    saved = meta_graph.object_graph_def.nodes
    matched, queue = {0: 0}, [0]
    for saved_id in queue:
        children = {child.local_name: child.node_id for child in checkpoint.nodes[matched[saved_id]].children}
        for child in saved[saved_id].children:
            if child.node_id not in matched and child.local_name in children:
                matched[child.node_id] = children[child.local_name]
                queue.append(child.node_id)
    keys = {}
    for saved_id, checkpoint_id in matched.items():
        for attribute in checkpoint.nodes[checkpoint_id].attributes:
            if attribute.name == "VARIABLE_VALUE" and saved[saved_id].WhichOneof("kind") == "variable":
                keys[saved_id] = attribute.checkpoint_key
    return keys


def _kept_for_call(graph_def, call) -> object:
    """A copy of ``graph_def`` holding only ``call`` and the nodes it depends on (and the whole library)."""
    from tensorflow.core.framework import graph_pb2

    nodes = {node.name: node for node in graph_def.node}
    kept, stack = set(), [call.name]
    while stack:
        name = stack.pop()
        if name in kept or name not in nodes:
            continue
        kept.add(name)
        stack.extend(text.lstrip("^").split(":")[0] for text in nodes[name].input)
    pruned = graph_pb2.GraphDef()
    pruned.versions.CopyFrom(graph_def.versions)
    pruned.library.CopyFrom(graph_def.library)
    pruned.node.extend(node for node in graph_def.node if node.name in kept)
    return pruned


def _inline(graph_def, fetches: list[str]):
    """``graph_def`` with its function calls inlined by grappler; If / While kept as they are."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.graph_def.CopyFrom(graph_def)
    for node in [*meta_graph.graph_def.node, *(n for f in meta_graph.graph_def.library.function for n in f.node_def)]:
        if node.op in _CONTROL_FLOW_OPS:
            node.attr["_lower_using_switch_merge"].b = False
    for function in meta_graph.graph_def.library.function:
        if "api_implements" in function.attr:  # a second implementation (e.g. for GPU) stops inlining
            del function.attr["api_implements"]
    meta_graph.collection_def["train_op"].node_list.value.extend(fetches)  # what grappler keeps
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.min_graph_nodes = -1
    rewrite.optimizers.append("function")
    rewrite.function_optimization = rewriter_config_pb2.RewriterConfig.AGGRESSIVE
    try:
        return tf_optimizer.OptimizeGraph(config, meta_graph)
    except Exception as error:  # grappler raises several kinds
        raise GraphError(f"cannot inline the signature's functions: {str(error).strip().splitlines()[0]}") from None


def _merge_handles(graph_def, handle_keys: dict[str, str]) -> dict[str, str]:
    """Point every reader of a handle at the first handle of the same key; returns kept handle -> key."""
    first: dict[str, str] = {}
    replace: dict[str, str] = {}
    for handle, key in handle_keys.items():
        replace[handle] = first.setdefault(key, handle)
    for node in graph_def.node:
        for k, text in enumerate(node.input):
            control = text.startswith("^")
            name, _, rest = text.lstrip("^").partition(":")
            if replace.get(name, name) != name:
                node.input[k] = ("^" if control else "") + replace[name] + (":" + rest if rest else "")
    dropped = {h for h, kept in replace.items() if kept != h}
    kept_nodes = [node for node in graph_def.node if node.name not in dropped]
    del graph_def.node[:]
    graph_def.node.extend(kept_nodes)
    return {handle: key for key, handle in first.items()}


def _add_restore(meta_graph, handles: dict[str, str], dtypes: dict[str, object]) -> None:
    """Nodes assigning every handle from the checkpoint with one RestoreV2; the saver_def naming them."""
    from tensorflow.core.framework import tensor_shape_pb2, types_pb2
    import tensorflow as tf

    graph_def = meta_graph.graph_def
    names = sorted(handles)
    keys = [handles[name] for name in names]

    def add(name: str, op: str, inputs=()):
        node = graph_def.node.add()
        node.name, node.op = f"{_RESTORE}/{name}", op
        node.input.extend(inputs)
        return node

    filename = add("filename", "Placeholder")
    filename.attr["dtype"].type = types_pb2.DT_STRING
    filename.attr["shape"].shape.CopyFrom(tensor_shape_pb2.TensorShapeProto())
    for name, values in (("tensor_names", keys), ("shape_and_slices", [""] * len(keys))):
        const = add(name, "Const")
        const.attr["dtype"].type = types_pb2.DT_STRING
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(values, tf.string))
    done = add("all", "NoOp")
    meta_graph.saver_def.Clear()
    meta_graph.saver_def.filename_tensor_name = filename.name + ":0"
    meta_graph.saver_def.restore_op_name = done.name
    meta_graph.saver_def.version = 2  # V2
    if not names:
        return
    restore = add("RestoreV2", "RestoreV2", [filename.name, f"{_RESTORE}/tensor_names", f"{_RESTORE}/shape_and_slices"])
    restore.attr["dtypes"].list.type.extend([dtypes[key].as_datatype_enum for key in keys])
    for k, name in enumerate(names):
        assign = add(f"assign/{k}", "AssignVariableOp", [name, f"{restore.name}:{k}"])
        assign.attr["dtype"].type = dtypes[keys[k]].as_datatype_enum
        done.input.append("^" + assign.name)


def load_signature_graph(path, signature: str | None, reader) -> SignatureGraph:
    """The signature (``serving_default`` when None) of the SavedModel at ``path`` as one graph; ``reader``
    reads its ``variables/variables`` (module docstring)."""
    from tensorflow.core.protobuf import meta_graph_pb2

    path = Path(path).expanduser()
    saved_model = read_saved_model(path)
    source = serving_meta_graph(saved_model, path)
    available = sorted(source.signature_def)
    name = signature or DEFAULT_SIGNATURE
    if name not in source.signature_def:
        listed = ", ".join(available) or "none"
        raise GraphError(f"SavedModel {path} has no signature {name} (it has: {listed}): pass --signature NAME.")
    sig = source.signature_def[name]
    inputs = {key: t.name for key, t in sig.inputs.items()}
    outputs = {key: t.name for key, t in sig.outputs.items()}
    call = _call_node(source.graph_def, sig)
    if call is None:  # a TF1 SavedModel: its graph and saver as they are, keys from its variable collections
        if not source.saver_def.restore_op_name:
            raise GraphError(f"SavedModel {path} has no saver and signature {name} calls no function: re-export it.")
        return SignatureGraph(path, name, source, inputs, outputs, checkpoint_keys(source),
                              partition_layout(source))
    function = call.attr["f"].func.name
    concrete = source.object_graph_def.concrete_functions.get(function)
    bound = list(concrete.bound_inputs) if concrete is not None else []
    data_inputs = [text for text in call.input if not text.startswith("^")]
    captured = data_inputs[len(data_inputs) - len(bound):] if bound else []
    object_keys = _checkpoint_keys(source, reader, path)
    nodes = {node.name: node for node in source.graph_def.node}
    handle_keys = {}
    for text, node_id in zip(captured, bound):
        handle = text.split(":")[0]
        if nodes[handle].op != "VarHandleOp":
            continue
        if node_id not in object_keys:
            raise GraphError(f"signature {name} of SavedModel {path} reads variable {handle}, which variables/ does "
                             "not save (an untracked variable): re-export the model with it tracked.")
        handle_keys[handle] = object_keys[node_id]
    unmapped = [text for text in data_inputs if nodes[text.split(":")[0]].op == "VarHandleOp"
                and text.split(":")[0] not in handle_keys]
    if unmapped:
        raise GraphError(f"cannot tell which saved variable signature {name} of SavedModel {path} reads as "
                         f"{unmapped[0]} (the object graph does not list its captures). Please report it.")
    fetches = [t.name for t in sig.inputs.values()] + [t.name for t in sig.outputs.values()]
    graph_def = _inline(_kept_for_call(source.graph_def, call), fetches)
    functions = {f.signature.name: f for f in graph_def.library.function}
    branches = {node.attr[branch].func.name for node in graph_def.node if node.op in _CONTROL_FLOW_OPS
                for branch in ("then_branch", "else_branch")}
    reachable = [*graph_def.node, *(n for name in branches if name in functions for n in functions[name].node_def)]
    for node in reachable:
        body = functions.get(node.attr["f"].func.name) if node.op in _CALL_OPS else None
        if body is not None and any(n.op.startswith("FusedBatchNorm") or n.op == "Rsqrt" for n in body.node_def):
            raise GraphError(f"grappler left the call {node.name} of function {body.signature.name} in SavedModel "
                             f"{path} un-inlined, and it normalises: ckptfix cannot reach that BN. Please report it.")
    handles = _merge_handles(graph_def, handle_keys)
    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.meta_info_def.CopyFrom(source.meta_info_def)
    meta_graph.graph_def.CopyFrom(graph_def)
    dtypes = reader.get_variable_to_dtype_map()
    missing = sorted(key for key in handles.values() if key not in dtypes)
    if missing:
        raise CheckpointError(f"SavedModel {path}: variables/ has no {missing[0]}; restore the folder from a good copy.")
    _add_restore(meta_graph, handles, dtypes)
    return SignatureGraph(path, name, meta_graph, inputs, outputs, handles)
