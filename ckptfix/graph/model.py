"""The model imported once and restored once, serving both modes a run needs: BN on batch statistics (to measure
the selected layers' per-batch moments) and BN on moving statistics (the output-agreement check).

The graph is rewritten on a copy of the GraphDef (the caller's MetaGraphDef is never changed):

* backprop (``gradients`` scopes and what depends on them: optimizer updates, the train op) is dropped, so
  importing and placing a training script's graph costs only its forward part, and recorded shapes of
  gradient nodes (which TF 1.x ``.meta`` files can get wrong) are never imported;
* devices are cleared, so TensorFlow places the graph on whatever the machine has (a GPU when there is one),
  or the whole graph is imported under ``tf.device(device)`` when a device is given (one model per device,
  :mod:`ckptfix.scaling`);
* a scalar bool ``ckptfix/use_batch_statistics`` (``placeholder_with_default(True)``, the *mode*) switches the selected
  layers between the two modes; the training flag, when there is one, is always fed False, so every other
  op (dropout, unselected BN layers) runs as saved in inference mode.

Per batch, for every BN input ``x`` of a selected layer, its accurate per-channel *shifted sums*
(:mod:`ckptfix.graph.sums`) are fetched, for all layers in one ``session.run``; only these vectors leave the
device, and the host forms the count, mean and M2 in float64. Each BN site that runs with the flag fed False gets both modes:

* a top-level fused node is *twinned* (:func:`_twin`): ``Switch(x, mode)`` feeds the node itself in training
  mode (``exponential_avg_factor=1``) or an inference-mode copy reading the moving variables, and a ``Merge``
  hands the one that ran to the node's consumers. In batch mode the training node's output 1, its float32
  batch mean, is the shift; the shifted sums are taken of the ``x`` it normalised. The training-branch node
  of a TF1 ``tf.cond`` on the flag never runs (flag fed False) and is left alone;
* non-fused BN arithmetic reads ``select(mode, batch moment, moving statistic)``, the batch moments formed
  here from the shifted sums (shift: ``reduce_mean``, float32); its moving statistics are what it read before
  (the graph's own inference path) or, with training mode baked in (no flag), reads of the variables;
* a fused node in the ``else_branch`` of ``If`` ops whose condition is the training flag: each such ``If`` gets
  a new ``then_branch``, a copy of the else branch with the selected BN nodes in training mode, and the mode
  switch as its condition; the batch mean the ``If`` returns from the copy is the shift, as above;
* non-fused arithmetic in such an else branch (hand-written ``tf.cond(training, batch moments, population
  variables)`` under TF2 control flow): both branches get two more arguments per site, its batch mean and biased
  variance, formed at top level from the shifted sums of the layer's input (the ``If``'s argument); the new
  ``then_branch`` (the else branch copied) normalises with them, the else branch ignores them. The original then
  branch, which also runs the graph's own updates of the statistics, is never called.

Where the two modes cannot coexist (a selected BN node inside another control-flow function, e.g. training
mode baked into a branch function), batch mode still works (the node is switched to training mode) and
:attr:`GraphModel.inference_unavailable` says why no inference-mode outputs can be computed.

The moving statistics the inference mode uses can be replaced in the session (:meth:`assign_statistics`),
never on disk; update ops are never fetched. The checkpoint is restored with the graph's own saver (every
variable, optimizer slots included).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from ckptfix.data.spec import FixedBatch, InputSpec
from ckptfix.errors import DataError, GraphError
from ckptfix.graph.batchnorm import BatchNormLayer, FusedNode, NonFusedSite
from ckptfix.graph.feeds import Feeds
from ckptfix.graph.index import IF_OPS, is_gradient, parse_input
from ckptfix.graph.session import (SessionModel, clear_devices, editable_nodes, first_line, import_graph,
                                  measuring_config, restore)
from ckptfix.graph.sums import (FUSED_SQUARES_MAX_COUNT, FusedInputSums, SharedConstants, ShiftedSums, SumsFetch,
                                per_group, shifted_sums)
from ckptfix.stats import BatchMoments

_IDENTITY_OPS = frozenset({"Identity", "RefIdentity", "Snapshot"})
_SWITCH_OPS = frozenset({"Switch", "RefSwitch"})
_BATCH_BRANCH_SUFFIX = "_ckptfix_batch_statistics"
_INFERENCE_BRANCH_SUFFIX = "_ckptfix_moving_statistics"


class _Rewrite(NamedTuple):
    """The rewritten GraphDef and what remains to wire after import."""

    graph_def: object
    fused: list[tuple[BatchNormLayer, FusedNode]]  # top-level fused nodes now twinned (training / inference)
    mode_ifs: dict[str, list[str]]  # else-branch function -> If ops whose then branch is its training copy
    inference_unavailable: str | None
    declared_batch: dict[str, int]  # fed input -> the batch dimension it was saved with, now freed
    # non-fused site in an else branch -> (If op, input index of its batch mean; the variance's is the next)
    branch_statistics: dict[NonFusedSite, list[tuple[str, int]]]


def _without_backprop(graph_def):
    """A copy of ``graph_def`` without backprop: nodes in ``gradients`` scopes and every node that depends on
    one (optimizer updates, the train op, the global-step increment), through data or control inputs.

    A training script's ``.meta`` is largely backprop (27% of the nodes of a slim ResNet-50); none of it is
    needed for the forward pass, and importing and placing it is a fixed cost of every run. The variables
    themselves (optimizer slots included) stay, so the graph's saver still restores the checkpoint.
    """
    from tensorflow.core.framework import graph_pb2

    consumers: dict[str, list[str]] = {}
    for node in graph_def.node:
        for text in node.input:
            producer = text.lstrip("^").split(":")[0]
            consumers.setdefault(producer, []).append(node.name)
    dropped: set[str] = set()
    stack = [node.name for node in graph_def.node if is_gradient(node.name)]
    while stack:
        name = stack.pop()
        if name not in dropped:
            dropped.add(name)
            stack.extend(consumers.get(name, []))
    pruned = graph_pb2.GraphDef()
    pruned.versions.CopyFrom(graph_def.versions)
    pruned.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in dropped:
            continue
        kept = pruned.node.add()
        kept.CopyFrom(node)
        if "_class" in kept.attr:  # colocation with a dropped node would fail the import
            places = [c for c in kept.attr["_class"].list.s if c.decode().removeprefix("loc:@") not in dropped]
            if places:
                del kept.attr["_class"].list.s[:]
                kept.attr["_class"].list.s.extend(places)
            else:
                del kept.attr["_class"]
    return pruned


_PLACEHOLDERS = frozenset({"Placeholder", "PlaceholderWithDefault"})


def _free_batch_dimensions(graph_def, inputs) -> dict[str, int]:
    """Free the batch dimension of every fed input saved with a fixed one (a placeholder ``[32, 224, 224, 3]``, an
    ``IteratorGetNext`` output of a ``drop_remainder`` pipeline); returns input -> the size it had.

    The saved size is a declaration, not a need of the graph: any batch size runs unless an operation of the graph
    fixes it again (:func:`_batch_fixed_by`). Once one is freed, every recorded ``_output_shapes`` is dropped too:
    the importer would otherwise give the input and everything after it the recorded shapes back."""
    freed = {}
    nodes = {node.name: node for node in graph_def.node}
    for name in inputs:
        tensor = parse_input(name)
        node = nodes.get(tensor.node)
        if node is None:
            continue
        if node.op in _PLACEHOLDERS:
            shape = node.attr["shape"].shape
        elif node.op == "IteratorGetNext" and tensor.index < len(node.attr["output_shapes"].list.shape):
            shape = node.attr["output_shapes"].list.shape[tensor.index]
        else:
            continue
        if not shape.unknown_rank and shape.dim and shape.dim[0].size > 0:
            freed[name] = int(shape.dim[0].size)
            shape.dim[0].size = -1
    if freed:
        for node in graph_def.node:
            if "_output_shapes" in node.attr:
                del node.attr["_output_shapes"]
    return freed


#: operations whose output may lose the batch axis (a reduction over it) or take a size from elsewhere: a static
#: first dimension after them says nothing about the batch
_REDUCING_OPS = frozenset({"Mean", "Sum", "Max", "Min", "Prod", "All", "Any", "ArgMax", "ArgMin", "Shape", "ShapeN",
                           "Size", "Rank", "TensorArrayV3", "TensorArrayGatherV3", "TensorArraySizeV3"})


def _batch_fixed_by(graph, declared: Mapping[str, int]) -> FixedBatch | None:
    """The first operation downstream of a freed input that fixes the batch size again: its input's batch dimension
    is unknown, its output's first dimension is static and equal to the size the input was saved with
    (``tf.reshape(x, [32, -1])``, ``x + tf.zeros([32, 10])``). Such a graph takes batches of that size only (any other
    size fails, or worse, is silently re-batched by the reshape)."""
    for name, size in declared.items():
        stack, seen = [graph.get_tensor_by_name(name)], set()
        while stack:
            tensor = stack.pop()
            for op in tensor.consumers():
                if op.name in seen:
                    continue
                seen.add(op.name)
                unknown = any(t.shape.rank and t.shape.dims[0].value is None for t in op.inputs)
                for output in op.outputs:
                    dims = output.shape.as_list() if output.shape.rank else []
                    if unknown and op.type not in _REDUCING_OPS and dims and dims[0] == size:
                        return FixedBatch(size, name, f"{op.type} {op.name} gives it a static first dimension of {size}")
                    stack.append(output)
    return None


def _set_training(node) -> None:
    node.attr["is_training"].b = True
    node.attr["exponential_avg_factor"].f = 1.0


def _reads_flag(nodes: dict, text: str, flag: str | None) -> bool:
    """Whether the top-level input ``text`` is the training flag (through Identity ops)."""
    tensor = parse_input(text)
    while flag is not None and tensor is not None and tensor.name != flag:
        node = nodes.get(tensor.node)
        if node is None or node.op not in _IDENTITY_OPS:
            return False
        tensor = parse_input(node.input[0])
    return flag is not None and tensor is not None


def _add_read(graph_def, variable) -> str:
    """Add (once) a node reading ``variable``: ReadVariableOp for resource variables, Identity for TF1 ones."""
    name = f"ckptfix/read/{variable.name}"
    if not any(node.name == name for node in graph_def.node):
        read = graph_def.node.add()
        read.name = name
        read.input.append(variable.name)
        read.op = "ReadVariableOp" if variable.op == "VarHandleOp" else "Identity"
        read.attr["dtype" if variable.op == "VarHandleOp" else "T"].type = variable.attr["dtype"].type
    return name


#: the scalar bool that switches the selected layers between batch (True, the default) and moving statistics
MODE_SWITCH = "ckptfix/use_batch_statistics"


def _add_mode_switch(graph_def) -> None:
    """``MODE_SWITCH = placeholder_with_default(True, [])``, as NodeDefs."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    default = graph_def.node.add()
    default.name, default.op = MODE_SWITCH + "/default", "Const"
    default.attr["dtype"].type = types_pb2.DT_BOOL
    default.attr["value"].tensor.CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_BOOL, bool_val=[True],
                                                                 tensor_shape=tensor_shape_pb2.TensorShapeProto()))
    switch = graph_def.node.add()
    switch.name, switch.op = MODE_SWITCH, "PlaceholderWithDefault"
    switch.input.append(default.name)
    switch.attr["dtype"].type = types_pb2.DT_BOOL
    switch.attr["shape"].shape.CopyFrom(tensor_shape_pb2.TensorShapeProto())


def _twin(graph_def, nodes: dict, consumers: dict, definition, layer: BatchNormLayer, reads_statistics: bool) -> None:
    """Give a top-level fused node both modes, of which only one runs per ``session.run``::

        x -> Switch(MODE_SWITCH) -true->  the node itself, in training mode (exponential_avg_factor 1):
                                          y, and the batch mean / Bessel-corrected variance it computes anyway
                                 -false-> <node>/ckptfix_inference: a copy in inference mode on the moving variables
        Merge(both y) -> every consumer of the node's y

    so batch mode costs a training-mode forward pass and the two shifted sums of ``x`` (the node's own mean is the
    shift), and inference mode reads the variables :meth:`GraphModel.assign_statistics` replaces. ``consumers``:
    node name -> the top-level NodeDefs that take one of its outputs (as built before any twin was added)."""
    name = definition.name
    inference = graph_def.node.add()
    inference.CopyFrom(definition)
    inference.name = f"{name}/ckptfix_inference"
    inference.attr["is_training"].b = False
    if not reads_statistics:  # slim's own fused path feeds empty constants: read the variables
        inference.input[3] = _add_read(graph_def, nodes[layer.mean_variable])
        inference.input[4] = _add_read(graph_def, nodes[layer.variance_variable])
    switch = graph_def.node.add()
    switch.name, switch.op = f"{name}/ckptfix_switch", "Switch"
    switch.input.extend([definition.input[0], MODE_SWITCH])
    consumers.setdefault(definition.input[0].split(":")[0], []).append(switch)  # a BN fed by a twinned BN
    switch.attr["T"].type = definition.attr["T"].type
    merge = graph_def.node.add()
    merge.name, merge.op = f"{name}/ckptfix_merge", "Merge"
    merge.input.extend([f"{inference.name}:0", f"{name}:0"])
    merge.attr["T"].type = definition.attr["T"].type
    merge.attr["N"].i = 2
    for consumer in consumers.get(name, []):
        for k, text in enumerate(consumer.input):
            if text in (name, f"{name}:0"):
                consumer.input[k] = f"{merge.name}:0"
    definition.input[0] = f"{switch.name}:1"
    inference.input[0] = f"{switch.name}:0"
    _set_training(definition)


def _rewrite_graph_def(meta_graph, layers: list[BatchNormLayer], feeds: Feeds) -> _Rewrite:
    """Backprop dropped, devices cleared, the inputs' batch dimensions freed, the selected layers' BN nodes set up for
    both modes (module docstring)."""
    from tensorflow.core.framework import function_pb2

    flag = feeds.training_flag
    graph_def = _without_backprop(meta_graph.graph_def)
    clear_devices(graph_def)
    declared = _free_batch_dimensions(graph_def, feeds.inputs)
    scopes = editable_nodes(graph_def)
    callers: dict[str, list[tuple[str, object]]] = {}  # function -> (branch attr, If NodeDef) calling it
    for node in graph_def.node:
        if node.op in IF_OPS:
            for branch in ("then_branch", "else_branch"):
                callers.setdefault(node.attr[branch].func.name, []).append((branch, node))

    def on_flag(function: str, branch: str) -> bool:
        """Whether ``function`` is only ever called as ``branch`` of Ifs on the training flag."""
        sites = callers.get(function, [])
        return bool(sites) and all(b == branch and _reads_flag(scopes[None], n.input[0], flag) for b, n in sites)

    consumers: dict[str, list] = {}
    for node in graph_def.node:
        for text in node.input:
            if not text.startswith("^"):
                consumers.setdefault(text.split(":")[0], []).append(node)
    fused, in_else_branches, unavailable = [], {}, None
    nonfused_in_else: dict[str, list] = {}
    for layer in layers:
        for site in layer.nonfused_sites:
            if site.function is None:
                continue
            if not on_flag(site.function, "else_branch"):
                raise GraphError(f"BN layer {layer.name} normalises inside function {site.function}, which is not the "
                                 "else branch of a tf.cond on the training flag; ckptfix cannot measure it there.")
            nonfused_in_else.setdefault(site.function, []).append(site)
        for node in layer.fused_nodes:
            definition = scopes[node.function][node.node]
            if node.function is None:
                if node.is_training and flag is not None:
                    continue  # the training branch of a tf.cond on the flag: never runs with the flag fed False
                _twin(graph_def, scopes[None], consumers, definition, layer, node.reads_statistics)
                fused.append((layer, node))
            elif node.is_training:
                if not on_flag(node.function, "then_branch"):  # else: a training branch that never runs
                    reason = f"BN layer {layer.name} runs in training mode inside function {node.function}"
                    unavailable = unavailable or reason
            elif on_flag(node.function, "else_branch"):
                in_else_branches.setdefault(node.function, set()).add(node.node)
            else:
                _set_training(definition)
                reason = f"BN layer {layer.name} normalises inside function {node.function}, which has no mode switch"
                unavailable = unavailable or reason
    functions = {f.signature.name: f for f in graph_def.library.function}
    mode_ifs: dict[str, list[str]] = {}
    branch_statistics: dict[NonFusedSite, list[tuple[str, int]]] = {}
    for name in sorted(set(in_else_branches) | set(nonfused_in_else)):
        copy = function_pb2.FunctionDef()
        copy.CopyFrom(functions[name])
        copy.signature.name = name + _BATCH_BRANCH_SUFFIX
        for definition in copy.node_def:
            if definition.name in in_else_branches.get(name, ()):
                _set_training(definition)
        sites = nonfused_in_else.get(name, [])
        if sites:  # both branches take each site's batch mean and variance as two more arguments
            inference = _with_statistics_arguments(functions[name], sites, rename=name + _INFERENCE_BRANCH_SUFFIX)
            graph_def.library.function.append(inference)
            copy = _with_statistics_arguments(copy, sites, use=True)
        graph_def.library.function.append(copy)
        for _, caller in callers[name]:
            caller.attr["then_branch"].func.name = copy.signature.name
            caller.input[0] = MODE_SWITCH
            mode_ifs.setdefault(name, []).append(caller.name)
            if sites:
                caller.attr["else_branch"].func.name = inference.signature.name
                for site in sites:
                    dtype = scopes[name][site.mean_use[0]].attr["T"].type
                    branch_statistics.setdefault(site, []).append((caller.name, len(_data_inputs(caller))))
                    added = [_add_placeholder(graph_def, dtype) for _ in range(2)]  # rewired after import
                    inputs = [*_data_inputs(caller), *added, *(text for text in caller.input if text.startswith("^"))]
                    del caller.input[:]
                    caller.input.extend(inputs)
                    caller.attr["Tin"].list.type.extend([dtype, dtype])
    _add_mode_switch(graph_def)
    return _Rewrite(graph_def, fused, mode_ifs, unavailable, declared, branch_statistics)


def _data_inputs(node) -> list[str]:
    return [text for text in node.input if not text.startswith("^")]


def _add_placeholder(graph_def, dtype) -> str:
    """A float placeholder of unknown shape standing for an If input wired after import."""
    node = graph_def.node.add()
    node.name = f"ckptfix/branch_statistics/{sum(n.name.startswith('ckptfix/branch_statistics/') for n in graph_def.node)}"
    node.op = "Placeholder"
    node.attr["dtype"].type = dtype
    return node.name


def _with_statistics_arguments(function, sites, rename: str | None = None, use: bool = False):
    """A copy of ``function`` with two more arguments per non-fused site (its batch mean and variance, in ``sites``
    order); with ``use``, the site's arithmetic reads them instead of the moving statistics."""
    from tensorflow.core.framework import function_pb2

    copy = function_pb2.FunctionDef()
    copy.CopyFrom(function)
    if rename is not None:
        copy.signature.name = rename
    nodes = {node.name: node for node in copy.node_def}
    for k, site in enumerate(sites):
        dtype = nodes[site.mean_use[0]].attr["T"].type
        for statistic, (node, position) in (("mean", site.mean_use), ("variance", site.variance_use)):
            argument = copy.signature.input_arg.add()
            argument.name, argument.type = f"ckptfix_batch_{statistic}_{k}", dtype
            if use:
                nodes[node].input[position] = argument.name
    return copy


def _channel_axes(x, channels_last: bool | None, reference_shape=None) -> list[int]:
    """The channel axes of ``x``: from the layout, or from ``reference_shape`` (non-fused BN: the static shape of
    the mean the layer broadcasts against ``x``; aligned to ``x``'s trailing axes, its dimensions other than 1)."""
    rank = x.shape.rank
    if rank is None:
        raise GraphError(f"BN input {x.name} has unknown rank; ckptfix needs a static rank.")
    if reference_shape is None:
        return [rank - 1] if channels_last else [1]
    dims = reference_shape.as_list()
    if None in dims:
        raise GraphError(f"the statistics of BN input {x.name} have an unknown static shape.")
    offset = rank - len(dims)
    return [offset + i for i, d in enumerate(dims) if d != 1]


def _kept_dims(x, axes: list[int]):
    """The shape of a statistic of ``x`` per ``axes`` with the others kept as 1 (``keepdims``), as a tensor."""
    import tensorflow as tf

    ones = tf.ones_like(tf.shape(x))
    keep = tf.constant([a in axes for a in range(x.shape.rank)])
    return tf.where(keep, tf.shape(x), ones)


def _through_identity(tensor):
    while tensor.op.type in _IDENTITY_OPS:
        tensor = tensor.op.inputs[0]
    return tensor


def _before_switches(tensor):
    """``tensor`` before the Switch ops of TF1 ``tf.cond`` branches (if any): what every branch reads."""
    while tensor.op.type in _SWITCH_OPS:
        tensor = tensor.op.inputs[0]
    return tensor


def _normalised_input(op):
    """The tensor a top-level fused node normalises, before the Switch of a TF1 ``tf.cond`` (if any)."""
    return _before_switches(op.inputs[0])


def _in_training_branch(tensor, flag: str) -> bool:
    """Whether ``tensor`` is the true output of a Switch on the training flag (through Identity ops, as TF1
    ``tf.cond`` reads its predicate through ``cond/pred_id``): the branch taken when the flag is True."""
    return (tensor.op.type in _SWITCH_OPS and tensor.value_index == 1
            and _through_identity(tensor.op.inputs[1]).name == flag)


def _batch_statistics(moments: ShiftedSums):
    """(mean, biased variance) per channel of a batch from its shifted sums, float32 on the device: what non-fused BN
    normalises with in training mode."""
    import tensorflow as tf

    n = tf.cast(tf.reduce_prod(moments.count), tf.float32) / tf.cast(tf.size(moments.s1), tf.float32)
    mean = moments.shift + moments.s1 / n
    return mean, tf.maximum(moments.s2 / n - tf.square(mean - moments.center), 0.0)


class GraphModel(SessionModel):
    """The rewritten graph, imported once and restored once from a checkpoint (module docstring).

    :meth:`moments` runs a batch with the selected layers on batch statistics, :meth:`inference_outputs` with
    them on the moving statistics in the session, which :meth:`assign_statistics` replaces. A batch is an
    array (one input) or a dict keyed by input tensor name. Closed on leaving its context.
    """

    def __init__(self, meta_graph, layers: list[BatchNormLayer], feeds: Feeds, checkpoint_prefix: str,
                 device: str | None = None) -> None:
        import tensorflow as tf

        self.layers = layers
        rewrite = _rewrite_graph_def(meta_graph, layers, feeds)
        self.inference_unavailable: str | None = rewrite.inference_unavailable
        self.graph = import_graph(rewrite.graph_def, device)
        self.declared_batch = rewrite.declared_batch
        #: the batch size the graph's own operations need (None: any runs)
        self.fixed_batch = _batch_fixed_by(self.graph, self.declared_batch)
        self._device = device
        self._assigns: dict[str, tuple] = {}  # variable -> placeholder, assign op, dtype (see _assign)
        self._reads: dict[str, object] = {}  # variable -> its read (see _read)
        self._constants = SharedConstants()
        self._ghost_channels: dict[int, int] = {}  # id of a ghost BN input's sums -> its channels (see sums.per_group)
        with self.graph.as_default(), tf.device(device):
            self.inputs = [self.graph.get_tensor_by_name(name) for name in feeds.inputs]
            self.training_flag = None if feeds.training_flag is None else self.graph.get_tensor_by_name(feeds.training_flag)
            self.use_batch_statistics = self.graph.get_tensor_by_name(MODE_SWITCH + ":0")
            self._functions = {f.signature.name: f for f in rewrite.graph_def.library.function}
            self._mode_ifs = rewrite.mode_ifs
            self._branch_statistics = rewrite.branch_statistics
            with tf.compat.v1.name_scope("ckptfix/"):
                fused_by_layer: dict[str, list[FusedNode]] = {}
                for layer, node in rewrite.fused:
                    fused_by_layer.setdefault(layer.name, []).append(node)
                self._fetches = {
                    layer.name: self._layer_moments(layer, fused_by_layer.get(layer.name, []), feeds.training_flag)
                    for layer in layers
                }
            self.session = tf.compat.v1.Session(graph=self.graph, config=measuring_config())
        restore(self.session, meta_graph.saver_def, checkpoint_prefix)
        self._feed_list = self.inputs + ([self.training_flag] if self.training_flag is not None else [])
        self._sums = [sums for per_input in self._fetches.values() for sums in per_input]
        self._callables: dict[tuple, object] = {}
        self._larger: set[int] = set()  # BN inputs found larger than predicted: matrix-product route from then on

    def _select(self, batch_value, moving_value):
        import tensorflow as tf

        return tf.where(self.use_batch_statistics, tf.cast(batch_value, moving_value.dtype), moving_value)

    def _layer_moments(self, layer: BatchNormLayer, fused: list[FusedNode], flag: str | None) -> list[ShiftedSums | FusedInputSums]:
        """Wire the layer's BN sites to ``select(use_batch_statistics, ...)``; per BN input, its sums."""
        import tensorflow as tf

        by_input: dict[str, ShiftedSums | FusedInputSums] = {}
        for site in layer.nonfused_sites:
            if site.function is not None:
                self._branch_site(layer, site, by_input)
                continue
            x = self.graph.get_tensor_by_name(site.input.name)
            if flag is not None and _in_training_branch(x, flag):
                continue  # a hand-written tf.cond's batch-moments branch: never runs with the flag fed False
            name = _before_switches(x).name  # the layer's input (see find_batchnorm_layers)
            ghost = self._ghost_axes(layer, x) if layer.virtual_batch_size else None
            for (node, position), variable in ((site.mean_use, layer.mean_variable), (site.variance_use, layer.variance_variable)):
                op = self.graph.get_operation_by_name(node)
                used = op.inputs[position]
                moments = by_input.get(name)
                if moments is None:
                    moments = by_input[name] = shifted_sums(x, ghost or _channel_axes(x, None, used.shape), self._constants)
                    if ghost:
                        self._ghost_channels[id(moments)] = x.shape[ghost[1]]
                batch = _batch_statistics(moments)[variable != layer.mean_variable]
                # ghost BN: one statistic per group and channel, shaped [1, groups, 1.., channels, 1..] as the layer
                # keeps them; the moving one broadcast over the groups
                shape = tf.shape(used) if ghost is None else _kept_dims(x, ghost)
                moving_shape = tf.shape(used) if ghost is None else [x.shape[a] if a == ghost[1] else 1 for a in range(x.shape.rank)]
                moving = used if flag is not None else tf.reshape(tf.cast(self._read(variable), used.dtype), moving_shape)
                op._update_input(position, self._select(tf.reshape(tf.cast(batch, used.dtype), shape), moving))
        for node in fused:  # twinned (see _twin): shifted by the training node's own batch mean
            op = self.graph.get_operation_by_name(node.node)
            name = _normalised_input(op).name
            if name not in by_input:  # the input as taken in batch mode (the Switch's true output)
                x = op.inputs[0]
                by_input[name] = FusedInputSums(x, _channel_axes(x, node.channels_last), self._constants,
                                                mean=op.outputs[1], variance=op.outputs[2])
        for tensor in layer.inputs:  # BN inputs of nodes not fed above (inside branch functions)
            if tensor.name not in by_input:
                x = self.graph.get_tensor_by_name(tensor.name)
                axes = _channel_axes(x, layer.channels_last)
                by_input[tensor.name] = shifted_sums(x, axes, self._constants, shift=self._if_batch_mean(layer, x))
        return list(by_input.values())

    def _branch_site(self, layer: BatchNormLayer, site, by_input: dict) -> None:
        """A non-fused site in the else branch of Ifs on the training flag (rewritten, see :func:`_rewrite_graph_def`):
        the batch mean and variance of the layer's top-level input fed to the Ifs' added arguments."""
        import tensorflow as tf

        x = self.graph.get_tensor_by_name(layer.inputs[0].name)
        shape = self.graph.get_operation_by_name(layer.mean_variable).get_attr("shape")
        variable_shape = tf.TensorShape(shape)
        moments = by_input.get(x.name)
        if moments is None:
            moments = by_input[x.name] = shifted_sums(x, _channel_axes(x, None, variable_shape), self._constants)
        for caller, k in self._branch_statistics[site]:
            op = self.graph.get_operation_by_name(caller)
            for offset, value in enumerate(_batch_statistics(moments)):
                dtype = op.inputs[k + offset].dtype
                op._update_input(k + offset, tf.reshape(tf.cast(value, dtype), variable_shape.as_list()))

    def _ghost_axes(self, layer: BatchNormLayer, x) -> list[int]:
        """Ghost BN's per-statistic axes of its reshaped input ``[V, groups, ...]``: the groups (axis 1) and the channels
        (the axis after it whose size is the moving statistics' length)."""
        shape = self.graph.get_operation_by_name(layer.mean_variable).get_attr("shape")
        channels = int(np.prod([d.size for d in shape.dim]))
        dims = x.shape.as_list() if x.shape.rank else []
        axes = [a for a in range(2, len(dims)) if dims[a] == channels]
        if not axes:
            raise GraphError(f"ghost BN layer {layer.name}: no axis of {x.name} {x.shape} holds its {channels} channels.")
        return [1, axes[-1]]

    def _if_batch_mean(self, layer: BatchNormLayer, x):
        """The batch mean of ``x`` returned by the one ``If`` whose training copy of an else branch (see
        :func:`_rewrite_graph_def`) normalises ``x`` with a fused node of ``layer``; else None."""
        for fused in layer.fused_nodes:
            callers = self._mode_ifs.get(fused.function, [])
            function = self._functions.get(fused.function)
            if len(callers) != 1 or function is None:
                continue
            caller = self.graph.get_operation_by_name(callers[0])
            node = next((n for n in function.node_def if n.name == fused.node), None)
            arguments = [arg.name for arg in function.signature.input_arg]
            if node is None or node.input[0] not in arguments:
                continue
            if _through_identity(caller.inputs[1 + arguments.index(node.input[0])]) is not x:
                continue
            returned = {function.ret[arg.name]: k for k, arg in enumerate(function.signature.output_arg)}
            mean_k = returned.get(f"{fused.node}:batch_mean:0")
            if mean_k is not None:
                return caller.outputs[mean_k]
        return None

    def _read(self, variable: str):
        """A read of the variable op ``variable`` (in the graph's context), one per variable however many sites use it."""
        import tensorflow as tf

        if variable not in self._reads:
            op = self.graph.get_operation_by_name(variable)
            if op.type == "VarHandleOp":
                self._reads[variable] = tf.raw_ops.ReadVariableOp(resource=op.outputs[0], dtype=tf.as_dtype(op.get_attr("dtype")))
            else:
                self._reads[variable] = tf.identity(op.outputs[0])
        return self._reads[variable]

    def _assign(self, variable: str) -> tuple:
        """A placeholder and an assign op for ``variable``, added to the graph on first use (the agreement check's
        :meth:`assign_statistics`; a run without it never builds them)."""
        import tensorflow as tf

        if variable not in self._assigns:
            op = self.graph.get_operation_by_name(variable)
            dtype = tf.as_dtype(op.get_attr("dtype"))
            with self.graph.as_default(), tf.device(self._device), tf.compat.v1.name_scope("ckptfix/"):
                value = tf.compat.v1.placeholder(dtype)
                if op.type == "VarHandleOp":
                    assign = tf.raw_ops.AssignVariableOp(resource=op.outputs[0], value=value)
                else:
                    assign = tf.compat.v1.assign(op.outputs[0], value, validate_shape=False).op
            self._assigns[variable] = (value, assign, dtype)
        return self._assigns[variable]

    @property
    def input_specs(self) -> list[InputSpec]:
        """What each input takes (tensor name, static shape, dtype), in the order of ``inputs``; the batch dimension
        as saved (a freed one included: the training batch size it records is the default batch size)."""
        def shape(t):
            dims = None if t.shape.rank is None else t.shape.as_list()
            return None if dims is None else tuple([self.declared_batch.get(t.name, dims[0]), *dims[1:]] if dims else dims)

        return [InputSpec(t.name, shape(t), np.dtype(t.dtype.as_numpy_dtype)) for t in self.inputs]

    def _routes(self, rows: int) -> tuple[bool, ...]:
        """Per BN input (in ``_sums`` order), whether its squares are summed by a matrix product for a batch whose BN
        inputs have ``rows`` rows (:class:`FusedInputSums`; always for the others)."""
        return tuple(not isinstance(sums, FusedInputSums) or k in self._larger or sums.needs_accurate(rows)
                     for k, sums in enumerate(self._sums))

    def _callable(self, output: str | None, routes: tuple[bool, ...]):
        """One callable per output and routes; a route's ops are added to the graph the first time it is needed."""
        import tensorflow as tf

        key = (output, routes)
        if key not in self._callables:
            with self.graph.as_default(), tf.device(self._device), tf.compat.v1.name_scope("ckptfix/"):
                chosen = [sums if not isinstance(sums, FusedInputSums) else sums.accurate() if accurate else sums.from_variance
                          for sums, accurate in zip(self._sums, routes)]
                fetch = SumsFetch(chosen)
            fetches = fetch.tensors + ([self.graph.get_tensor_by_name(output)] if output is not None else [])
            self._callables[key] = (self.session.make_callable(fetches, feed_list=self._feed_list), fetch)
        return self._callables[key]

    def _run(self, arrays: list, output: str | None, routes: tuple[bool, ...]) -> tuple[list[BatchMoments], object]:
        """Per BN input its moments, and the value of ``output`` (None without)."""
        import tensorflow as tf

        run, fetch = self._callable(output, routes)
        try:
            values = run(*arrays) if self.training_flag is None else run(*arrays, False)
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            raise self._rejected(arrays, error) from None
        count = len(fetch.tensors)
        return fetch.moments(values[:count]), (values[count] if output is not None else None)

    def _rejected(self, arrays: list, error: Exception) -> DataError:
        """The one-line error for a batch the graph failed on: with a fixed batch size it did not have, the fix."""
        shapes = ", ".join(f"{t.name} {tuple(a.shape)}" for t, a in zip(self.inputs, arrays))
        what = f"of shape {arrays[0].shape}" if len(arrays) == 1 else f"({shapes})"
        rows = int(np.shape(arrays[0])[0]) if np.ndim(arrays[0]) else 1
        sizes = set(self.declared_batch.values())
        if len(sizes) == 1 and rows not in sizes:
            size = sizes.pop()
            return DataError(f"the model rejected a calibration batch {what}: its input was saved with a batch of "
                             f"exactly {size} and the graph seems to need it ({first_line(error)}); pass --batch-size "
                             f"{size} and a number of samples that is a multiple of {size} (--num-samples).")
        return DataError(f"the model rejected a calibration batch {what}: {first_line(error)}")

    def moments(self, batch, output: str | None = None) -> tuple[dict[str, list[BatchMoments]], np.ndarray | None]:
        """Forward one batch with the selected layers on batch statistics: per layer, the moments of each of its
        BN inputs; with ``output``, that tensor's value from the same run (else None).

        A fused node's squares come from its own variance when the batch is small enough (``_routes``, predicted
        from the first input's batch size); a BN input found larger than predicted gets the batch run again with
        the matrix-product route for it."""
        arrays = self.input_values(batch)
        rows = int(np.shape(arrays[0])[0]) if np.ndim(arrays[0]) else 1
        routes = self._routes(rows)
        moments, value = self._run(arrays, output, routes)
        larger = frozenset(k for k, (sums, accurate) in enumerate(zip(self._sums, routes))
                           if not accurate and not 1 < moments[k].count <= FUSED_SQUARES_MAX_COUNT)
        if larger:
            self._larger |= larger
            routes = self._routes(rows)
            moments, value = self._run(arrays, output, routes)
        result, k = {}, 0
        for name, per_input in self._fetches.items():
            result[name] = [group for sums, moment in zip(per_input, moments[k : k + len(per_input)])
                            for group in per_group(moment, self._ghost_channels.get(id(sums)))]
            k += len(per_input)
        return result, value

    def inference_outputs(self, batch, output: str) -> np.ndarray:
        """The value of ``output`` for one batch, with the selected layers on the moving statistics in the session."""
        import tensorflow as tf

        feed = self.feed(batch)
        feed[self.use_batch_statistics] = False
        try:
            return self.session.run(self.graph.get_tensor_by_name(output), feed)
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            raise DataError(f"cannot compute the output {output} for the agreement check: {first_line(error)}") from None

    def assign_statistics(self, values: Mapping[str, np.ndarray]) -> None:
        """Assign new values (variable op name -> array) to moving statistics in the session, in one run."""
        assigns, feed = [], {}
        for variable, array in values.items():
            placeholder, assign, dtype = self._assign(variable)
            shape = self.graph.get_operation_by_name(variable).get_attr("shape")
            feed[placeholder] = np.asarray(array).astype(dtype.as_numpy_dtype).reshape([d.size for d in shape.dim])
            assigns.append(assign)
        self.session.run(assigns, feed)
