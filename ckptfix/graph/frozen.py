"""Frozen GraphDefs (``.pb`` binary, ``.pbtxt`` text): BN statistics held in ``Const`` nodes.

``convert_variables_to_constants`` / ``freeze_graph`` turn every variable into a ``Const`` of the same name,
so a layer's moving mean and variance are constants feeding a fused BN node's mean/variance inputs, or the
non-fused ``(variance + eps) -> Rsqrt -> Mul -> Sub`` arithmetic, directly or through ``Identity``.

The repair runs the ordinary checkpoint pipeline on a *thawed* copy: the statistics constants become
variables of the same name (``VariableV2``, same dtype and shape) in an in-memory MetaGraphDef with a saver,
and their values go into a temporary checkpoint (in a temporary folder, always removed). Which constants are
statistics is decided by :func:`ckptfix.graph.batchnorm.find_batchnorm_layers` itself, run on a probe copy
in which every non-empty floating constant of rank >= 1 is a (value-less) variable.

The repaired graph is the input GraphDef with only those constants' tensor values replaced (cast to each
constant's own dtype); every other node, the function library and the versions are kept as parsed, which is
checked on the written file before it replaces the destination.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ckptfix.io.locate import CheckpointFiles
from ckptfix.io.atomic import atomic_output, check_destination
from ckptfix.errors import GraphError, NoBatchNormError, OutputError
from ckptfix.graph.batchnorm import FUSED_OPS, find_batchnorm_layers, statistics_in_branches
from ckptfix.graph.index import GraphIndex

FROZEN_SUFFIXES = (".pb", ".pbtxt")
_FLOAT_TYPES = frozenset({1, 2, 14, 19})  # DT_FLOAT, DT_DOUBLE, DT_BFLOAT16, DT_HALF
# Scope components BN layers are named with (slim, Keras, tf.layers, common hand-written names).
_BN_SCOPE = re.compile(r"^(.*?(?:^|/)(?:BatchNorm|batch_normalization(?:_\d+)?|batchnorm|bn\w*|\w*_bn))(?:/|$)", re.IGNORECASE)


def is_frozen_graph(path) -> bool:
    """Whether ``path`` names a GraphDef file: suffix ``.pb`` or ``.pbtxt``, and not a checkpoint prefix that
    happens to end so (``model.pb`` with a ``model.pb.index`` beside it)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    path = Path(path).expanduser()
    return path.suffix.lower() in FROZEN_SUFFIXES and not path.with_name(path.name + ".index").is_file()


def _parse(path: Path, text: bool):
    from google.protobuf import text_format
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    if text:
        text_format.Parse(path.read_text(), graph_def)
    else:
        graph_def.ParseFromString(path.read_bytes())
    return graph_def


def _is_text(path: Path) -> bool:
    return path.suffix.lower() == ".pbtxt"


def load_graph_def(path: Path):
    """Parse a binary (``.pb``) or text (``.pbtxt``) GraphDef; GraphError when the file is not one."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError

    path = Path(path).expanduser()
    if not path.is_file():
        raise GraphError(f"no frozen graph at {path}: pass a .pb or .pbtxt GraphDef file.")
    if path.name == "saved_model.pb" or (path.parent / "variables").is_dir():
        raise GraphError(f"{path} belongs to a SavedModel, not a frozen GraphDef: pass its folder {path.parent}.")
    try:
        graph_def = _parse(path, _is_text(path))
    except (DecodeError, text_format.ParseError, UnicodeDecodeError, RuntimeError):
        kind = "text" if _is_text(path) else "binary"
        raise GraphError(f"{path} is not a {kind} TensorFlow GraphDef: pass a frozen .pb (binary) or .pbtxt (text).") from None
    if not graph_def.node:
        raise GraphError(f"{path} holds an empty graph: pass the frozen GraphDef of your model.")
    return graph_def


def _is_thawable(node) -> bool:
    """A floating constant with at least one element and rank >= 1 (where BN statistics can be)."""
    if node.op != "Const":
        return False
    tensor = node.attr["value"].tensor
    dims = [d.size for d in tensor.tensor_shape.dim]
    return tensor.dtype in _FLOAT_TYPES and len(dims) >= 1 and all(d > 0 for d in dims)


def _variable_node(const):
    """A ``VariableV2`` NodeDef with the constant's name, dtype and shape (no value)."""
    from tensorflow.core.framework import node_def_pb2

    node = node_def_pb2.NodeDef(name=const.name, op="VariableV2")
    node.attr["dtype"].type = const.attr["value"].tensor.dtype
    node.attr["shape"].shape.CopyFrom(const.attr["value"].tensor.tensor_shape)
    return node


def _thawed(graph_def, names: set[str]):
    """A copy of ``graph_def`` with the constants in ``names`` replaced by variables."""
    from tensorflow.core.framework import graph_pb2

    thawed = graph_pb2.GraphDef()
    thawed.versions.CopyFrom(graph_def.versions)
    thawed.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in names:
            thawed.node.append(_variable_node(node))
        else:
            thawed.node.add().CopyFrom(node)
    return thawed


def folded_layers(graph_def) -> list[str]:
    """Scopes named like BN layers (``conv1/BatchNorm``...) in a graph with no BN op left: folded layers."""
    if any(node.op in FUSED_OPS for node in graph_def.node):
        return []
    scopes = []
    for node in graph_def.node:
        found = _BN_SCOPE.match(node.name)
        if found and found.group(1) not in scopes:
            scopes.append(found.group(1))
    return scopes


def statistics_constants(graph_def, source: Path) -> set[str]:
    """Names of the constants holding BN moving statistics, those of BN out of ckptfix's reach included (which the
    source then names: :func:`~ckptfix.graph.batchnorm.statistics_in_branches`); NoBatchNormError naming folded
    layers if none."""
    probe = GraphIndex(_thawed(graph_def, {node.name for node in graph_def.node if _is_thawable(node)}))
    layers = find_batchnorm_layers(probe)
    in_branches = [layer.name for layer in layers if any(site.function for site in layer.nonfused_sites)]
    if in_branches:
        raise GraphError(f"BN in {', '.join(in_branches)} of {source.name} normalises inside tf.cond branch functions "
                         "(TF2 control flow), whose statistics constants ckptfix cannot thaw: recalibrate the checkpoint "
                         "the graph was frozen from, then freeze it again.")
    names = {name for layer in layers for name in (layer.mean_variable, layer.variance_variable)}
    names |= set(statistics_in_branches(probe, layers))
    if names:
        return names
    folded = folded_layers(graph_def)
    if folded:
        names = ", ".join(folded[:6]) + (f" and {len(folded) - 6} more" if len(folded) > 6 else "")
        raise NoBatchNormError(
            f"{source.name} has no BN statistics left: its BN layers were folded into the preceding layers' "
            f"weights ({names}); recalibrate the graph from before optimize_for_inference/fold_batch_norms."
        )
    raise NoBatchNormError(f"no BatchNorm layers in {source.name}: nothing to recalibrate.")


def _constant_values(graph_def, names: set[str]) -> dict[str, np.ndarray]:
    from tensorflow.python.framework import tensor_util

    return {node.name: tensor_util.MakeNdarray(node.attr["value"].tensor) for node in graph_def.node if node.name in names}


def _with_saver(graph_def, names: set[str]):
    """A MetaGraphDef of ``graph_def`` with a saver of its variables ``names``.

    The saver's ops are built in a graph holding only those variables and appended to ``graph_def``: the model
    itself is imported once per run, by the measuring session, not here.
    """
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    variables = graph_pb2.GraphDef()
    variables.versions.CopyFrom(graph_def.versions)
    variables.node.extend(node for node in graph_def.node if node.name in names)
    scope, taken = "ckptfix_saver", {node.name.split("/")[0] for node in graph_def.node}
    while scope in taken:
        scope += "_"
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(variables, name="")
        saver = tf.compat.v1.train.Saver({name: graph.get_tensor_by_name(f"{name}:0") for name in sorted(names)},
                                         name=scope)
    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.graph_def.CopyFrom(graph_def)
    meta_graph.graph_def.node.extend(node for node in graph.as_graph_def().node if node.name not in names)
    meta_graph.saver_def.CopyFrom(saver.as_saver_def())
    return meta_graph


@dataclass
class FrozenGraph:
    """A frozen GraphDef thawed for the checkpoint pipeline.

    ``files`` points at the temporary checkpoint of the statistics (``files.meta`` is None); ``meta_graph``
    is the thawed graph with a saver. Use as a context manager: the temporary folder is removed on exit.
    """

    path: Path
    graph_def: object
    constants: set[str]
    meta_graph: object
    files: CheckpointFiles
    _folder: Path

    @property
    def training_mode_layers(self) -> list[str]:
        """Scopes of top-level fused BN nodes frozen with ``is_training=True``: they normalise with batch
        statistics whatever their constants hold (without a training flag to feed False)."""
        return [
            node.name.rpartition("/")[0] or node.name for node in self.graph_def.node
            if node.op in FUSED_OPS and ("is_training" not in node.attr or node.attr["is_training"].b)
        ]

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def thaw(path: str | Path) -> FrozenGraph:
    """Load the frozen graph at ``path`` and thaw its BN statistics constants (see the module docstring)."""
    from ckptfix.io.checkpoint_writer import save_tensors

    path = Path(path).expanduser().absolute()
    graph_def = load_graph_def(path)
    constants = statistics_constants(graph_def, path)
    meta_graph = _with_saver(_thawed(graph_def, constants), constants)
    values = _constant_values(graph_def, constants)
    folder = Path(tempfile.mkdtemp(prefix="ckptfix-frozen-"))
    try:
        prefix = folder / "statistics"
        save_tensors(prefix, values)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FrozenGraph(path, graph_def, constants, meta_graph, CheckpointFiles(prefix=prefix, meta=None), folder)


def default_output_path(source: Path) -> Path:
    """``model-recalibrated.pb`` beside ``model.pb`` (same suffix)."""
    return source.with_name(f"{source.stem}-recalibrated{source.suffix}")


def check_output_path(source: Path, output: str | Path | None, overwrite: bool) -> Path:
    """The file to write: ``output`` (a folder: the input's name inside it), default beside the input.

    Refuses the input itself, an existing file without ``overwrite``, and an unwritable folder.
    """
    target = default_output_path(source) if output is None else Path(output).expanduser().absolute()
    if target.is_dir():
        target = target / source.name
    if target.suffix.lower() not in FROZEN_SUFFIXES:
        raise OutputError(f"output {target} must end in .pb (binary) or .pbtxt (text): choose another -o/--output.")
    return check_destination(target, [source], is_folder=False, overwrite=overwrite, what="the input graph")


def _serialize(graph_def, text: bool) -> bytes:
    from google.protobuf import text_format

    return text_format.MessageToString(graph_def).encode() if text else graph_def.SerializeToString()


def _replaced_constant(node, value: np.ndarray):
    """``node`` with its tensor value replaced by ``value`` cast to the constant's dtype (same shape)."""
    import tensorflow as tf

    tensor = node.attr["value"].tensor
    dtype = tf.dtypes.as_dtype(tensor.dtype)
    shape = [d.size for d in tensor.tensor_shape.dim]
    cast = tf.cast(tf.constant(np.asarray(value, np.float64)), dtype).numpy().reshape(shape)
    replaced = type(node)()
    replaced.CopyFrom(node)
    replaced.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(cast, dtype=dtype, shape=shape))
    return replaced, cast


def write_recalibrated_graph(frozen: FrozenGraph, new_values: Mapping[str, np.ndarray], target: Path, overwrite: bool) -> Path:
    """Write the frozen graph with only the statistics constants in ``new_values`` replaced, atomically.

    The format follows ``target``'s suffix (``.pbtxt`` text, else binary). The file is staged beside the
    destination (:func:`ckptfix.io.atomic.atomic_output`), parsed back and compared node by node with the
    input (every other node's serialization byte-identical, the replaced constants holding the new values),
    then renamed into place.
    """
    from tensorflow.core.framework import graph_pb2

    unknown = sorted(set(new_values) - frozen.constants)
    if unknown:
        raise GraphError(f"{unknown[0]} is not a statistics constant of {frozen.path.name}.")
    graph_def = graph_pb2.GraphDef()
    graph_def.versions.CopyFrom(frozen.graph_def.versions)
    graph_def.library.CopyFrom(frozen.graph_def.library)
    expected = {}
    for node in frozen.graph_def.node:
        if node.name in new_values:
            replaced, expected[node.name] = _replaced_constant(node, new_values[node.name])
            graph_def.node.append(replaced)
        else:
            graph_def.node.add().CopyFrom(node)
    text = _is_text(target)
    with atomic_output(target, overwrite=overwrite, is_folder=False) as staged:
        staged.path.write_bytes(_serialize(graph_def, text))
        staged.check_interrupt()
        _verify(frozen.graph_def, _parse(staged.path, text), expected)
    return target


def _without_value(node) -> bytes:
    stripped = type(node)()
    stripped.CopyFrom(node)
    del stripped.attr["value"]
    return stripped.SerializeToString(deterministic=True)


def _verify(original, written, expected: Mapping[str, np.ndarray]) -> None:
    """Every node byte-identical to the input's except the replaced constants, which differ only in their
    value and hold ``expected``. Serialization is deterministic (sorted attribute maps) on both sides."""
    from tensorflow.python.framework import tensor_util

    wrong = []
    if len(written.node) != len(original.node) or written.library != original.library or written.versions != original.versions:
        wrong.append("graph structure")
    for before, after in zip(original.node, written.node):
        if before.name in expected:
            value = tensor_util.MakeNdarray(after.attr["value"].tensor)
            if _without_value(after) != _without_value(before) or value.dtype != expected[before.name].dtype \
                    or value.tobytes() != expected[before.name].tobytes():
                wrong.append(before.name)
        elif after.SerializeToString(deterministic=True) != before.SerializeToString(deterministic=True):
            wrong.append(before.name)
    if wrong:
        raise OutputError(f"the written graph did not read back as expected ({', '.join(wrong[:3])}); nothing was kept.")
