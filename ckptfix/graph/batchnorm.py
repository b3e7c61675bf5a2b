"""Find the BatchNorm layers of a GraphDef and the checkpoint keys of their moving statistics.

Two shapes of BN are recognised:

* **fused**: ``FusedBatchNorm`` / ``V2`` / ``V3`` nodes, at top level or inside the branch functions of
  ``If`` / ``StatelessIf`` ops (TF2 control flow). With a tensor training flag and TF1 control flow there are
  two nodes per layer (one per ``tf.cond`` branch, both fed through ``Switch``).
* **non-fused**: ``tf.nn.batch_normalization`` arithmetic,
  ``y = x * inv + (beta - mean * inv)`` with ``inv = rsqrt(variance + eps) [* gamma]``, as slim
  (``fused=False``) and ``tf.nn.moments``-based code build it; hand-written BN in
  ``tf.cond(training, batch moments, population variables)`` (many TF1 research repositories: the branches read
  ``pop_mean`` / ``pop_var`` or the batch moments whose update assigns them) is one layer whose input is the
  tensor both branches read through their ``Switch`` (TF1 control flow) or as the ``If``'s argument (TF2 control
  flow: the arithmetic is searched in branch functions too).

A layer is identified by its ``moving_mean`` / ``moving_variance`` variables, found by walking a node's
mean/variance inputs back through Identity / ReadVariableOp / Switch / Merge / If to the variable op (op
scopes and variable scopes differ in slim nets, so names are never matched). When a training-mode node has
no such inputs (slim's own fused path feeds it empty constants), the variables are found through the update
ops its batch statistics feed, or through the other node of the same layer (same BN input). Non-fused
normalisations without moving variables (layer norm, instance norm) are not BN layers and are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ckptfix.errors import GraphError
from ckptfix.graph.index import IF_OPS, GraphIndex, Tensor, is_gradient

FUSED_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp"})
_PASS_THROUGH = frozenset({"Identity", "RefIdentity", "ReadVariableOp", "Enter", "RefEnter", "Snapshot", "Cast"})
_SWITCH_OPS = frozenset({"Switch", "RefSwitch"})
_MERGE_OPS = frozenset({"Merge", "RefMerge"})
_ASSIGN_OPS = frozenset(
    {"Assign", "AssignSub", "AssignAdd", "AssignVariableOp", "AssignSubVariableOp", "AssignAddVariableOp"}
)
# the walk from a batch statistic to the update assigning it stops at the next layer, and at the variance a mean
# feeds (tf.nn.moments: StopGradient(mean) -> SquaredDifference)
_FORWARD_STOP = frozenset({"Conv2D", "MatMul", "DepthwiseConv2dNative", "StopGradient", "SquaredDifference"}) | FUSED_OPS
_CHANNELS_LAST = frozenset({"NHWC", "NDHWC"})


@dataclass(frozen=True)
class FusedNode:
    """One FusedBatchNorm node (``function`` is the branch function holding it, None at top level)."""

    node: str
    function: str | None
    is_training: bool
    channels_last: bool
    reads_statistics: bool = True  # its mean/variance inputs are the moving variables (not empty constants)


@dataclass(frozen=True)
class NonFusedSite:
    """Non-fused BN arithmetic: the tensor it normalises, and where it reads its mean and variance
    (``(node, input position)`` pairs)."""

    input: Tensor
    mean_use: tuple[str, int]
    variance_use: tuple[str, int]
    mean: Tensor
    variance: Tensor

    @property
    def function(self) -> str | None:
        """The branch function holding the arithmetic (None: top level)."""
        return self.mean.function


@dataclass(frozen=True)
class ZeroDebias:
    """A moving mean kept debiased (slim ``zero_debias_moving_mean=True``): its update assigns
    ``moving_mean = biased / (1 - decay ** local_step)`` after moving ``biased`` and counting ``local_step``."""

    biased: str  # variable op names
    local_step: str
    decay: float


@dataclass
class BatchNormLayer:
    """A BN layer: its statistics' checkpoint keys, the tensors it normalises, and its nodes."""

    name: str
    kind: str
    mean_variable: str
    variance_variable: str
    inputs: list[Tensor] = field(default_factory=list)
    fused_nodes: list[FusedNode] = field(default_factory=list)
    nonfused_sites: list[NonFusedSite] = field(default_factory=list)
    #: ghost batch norm (``virtual_batch_size=V``): the input is reshaped to ``[V, groups, ...]`` and each group of
    #: V samples normalised by its own moments (None: ordinary BN)
    virtual_batch_size: int | None = None
    zero_debias: ZeroDebias | None = None

    @property
    def bessel(self) -> bool:
        """Fused TF1 BN moves its variance toward the Bessel-corrected batch variance, non-fused toward the biased."""
        return self.kind == "fused"

    @property
    def channels_last(self) -> bool | None:
        """Fused layers know their layout; None for non-fused (decided from the statistics' static shape)."""
        return self.fused_nodes[0].channels_last if self.fused_nodes else None


@dataclass
class _Candidate:
    input: Tensor
    mean_variables: set[str]
    variance_variables: set[str]
    fused: FusedNode | None = None
    site: NonFusedSite | None = None

    @property
    def label(self) -> str:
        if self.fused is not None:
            where = f" (in function {self.fused.function})" if self.fused.function else ""
            return self.fused.node + where
        return self.site.mean_use[0]


def _variables_behind(index: GraphIndex, start: Tensor) -> set[str]:
    """Variable ops that ``start`` reads through value-preserving ops and control-flow plumbing."""
    found: set[str] = set()
    seen: set[Tensor] = set()
    stack = [start]
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        node = index.node(tensor.node, tensor.function)
        if node is None:  # a function argument: continue at the calling If's input
            outer = index.to_top_level(tensor)
            if outer is not None:
                stack.append(outer)
            continue
        inputs = index.inputs(node, tensor.function)
        if node.op in VARIABLE_OPS and tensor.function is None:
            found.add(node.name)
        elif node.op in _PASS_THROUGH or node.op in _SWITCH_OPS:
            stack.extend(inputs[:1])
        elif node.op in _MERGE_OPS:
            stack.extend(inputs)
        elif node.op in IF_OPS and tensor.function is None:  # output k: what each branch returns as k
            for branch in ("then_branch", "else_branch"):
                returned = index.function_output(node.attr[branch].func.name, tensor.index)
                if returned is not None:
                    stack.append(returned)
    return found


def _variables_updated_from(index: GraphIndex, start: Tensor, depth: int = 8) -> set[str]:
    """Variables that update ops fed by ``start`` assign to (the moving-average update a layer built).

    The walk goes on through an assignment's value: when that reaches another assignment, the first variable was
    an accumulator and the last one is the statistic (slim ``zero_debias_moving_mean``: ``AssignSub`` of
    ``moving_mean/biased``, then ``moving_mean = biased / (1 - decay ** step)``)."""
    if start.function is not None:
        return set()
    found: set[str] = set()
    frontier, seen = [start.name], set()
    for _ in range(depth):
        following, assigned = [], set()
        for tensor_name in frontier:
            for user, _position in index.consumers.get(tensor_name, []):
                if user in seen:
                    continue
                seen.add(user)
                node = index.nodes[user]
                if node.op in _ASSIGN_OPS:
                    assigned |= _variables_behind(index, index.inputs(node)[0])
                    following.append(f"{user}:0")
                elif node.op not in _FORWARD_STOP and not node.op.endswith("Grad"):
                    following.extend(f"{user}:{k}" for k in range(3))
        found = assigned or found  # a later assignment of the value wins
        frontier = following
    return found


def _through_switch(index: GraphIndex, tensor: Tensor) -> Tensor:
    """Back through Switch ops; inside a function also through Identity (a call inlined into a branch
    function passes its arguments through Identity nodes)."""
    while True:
        node = index.node(tensor.node, tensor.function)
        if node is None or not (node.op in _SWITCH_OPS or (tensor.function is not None and node.op == "Identity")):
            return tensor
        tensor = index.inputs(node, tensor.function)[0]


def _fused_candidates(index: GraphIndex) -> list[_Candidate]:
    scopes = [(None, list(index.nodes.values()))]
    scopes += [(name, list(f.node_def)) for name, f in index.functions.items() if index.call_sites.get(name)]
    candidates = []
    for function, nodes in scopes:
        for node in nodes:
            if node.op not in FUSED_OPS or is_gradient(node.name):
                continue
            inputs = index.inputs(node, function)
            data_format = node.attr["data_format"].s.decode() if "data_format" in node.attr else "NHWC"
            means, variances = _variables_behind(index, inputs[3]), _variables_behind(index, inputs[4])
            fused = FusedNode(
                node.name,
                function,
                node.attr["is_training"].b if "is_training" in node.attr else True,
                data_format in _CHANNELS_LAST,
                reads_statistics=bool(means and variances),
            )
            x = index.to_top_level(_through_switch(index, inputs[0]))
            if x is None:
                raise GraphError(
                    f"BN node {fused.node} normalises a tensor computed inside a control-flow function; "
                    "ckptfix cannot feed it. Please report this graph."
                )
            if function is None and not means:
                means = _variables_updated_from(index, Tensor(node.name, 1))
            if function is None and not variances:
                variances = _variables_updated_from(index, Tensor(node.name, 2))
            candidates.append(_Candidate(x, means, variances, fused=fused))
    return candidates


def _nonfused_candidates(index: GraphIndex) -> list[_Candidate]:
    candidates = []
    for function in [None, *(name for name in index.functions if index.call_sites.get(name))]:
        candidates.extend(_nonfused_in(index, function))
    return candidates


def _nonfused_in(index: GraphIndex, function: str | None) -> list[_Candidate]:
    """Non-fused BN sites at top level (``function`` None) or in a branch function of top-level If ops; a site in a
    function counts when the tensor it normalises is an argument (fed by the If from the top level)."""
    consumers = index.consumers_in(function)

    def node(name: str):
        return index.node(name, function)

    def users(tensor_name: str, op_types: set[str]) -> list:
        return [(node(user), position) for user, position in consumers.get(tensor_name, []) if node(user).op in op_types]

    def is_const(tensor: Tensor) -> bool:
        producer = node(tensor.node)
        return producer is not None and producer.op == "Const"

    candidates = []
    body = index.nodes.values() if function is None else index.functions[function].node_def
    for rsqrt in body:
        if rsqrt.op != "Rsqrt" or is_gradient(rsqrt.name):
            continue
        add = node(index.inputs(rsqrt, function)[0].node)
        if add is None or add.op not in {"Add", "AddV2"}:
            continue
        add_inputs = index.inputs(add, function)
        non_const = [k for k, t in enumerate(add_inputs) if not is_const(t)]
        if len(non_const) != 1:
            continue
        inv = f"{rsqrt.name}:0"
        muls = users(inv, {"Mul"})
        if len(muls) == 1:  # inv = rsqrt(...) * gamma
            inv = f"{muls[0][0].name}:0"
            muls = users(inv, {"Mul"})
        if len(muls) != 2:
            continue
        # y = x * inv + (beta - mean * inv); without beta: x * inv + (-mean) * inv
        roles: dict[str, tuple[str, int]] = {}
        for mul, position in muls:
            operand = index.inputs(mul, function)[1 - position]
            producer = node(operand.node)
            if any(p == 1 for _, p in users(f"{mul.name}:0", {"Sub"})) or users(f"{mul.name}:0", {"Neg"}):
                roles["mean"] = (mul.name, 1 - position)
            elif producer is not None and producer.op == "Neg":
                roles["mean"] = (producer.name, 0)
            elif users(f"{mul.name}:0", {"Add", "AddV2"}):
                roles["x"] = (mul.name, 1 - position)
        if set(roles) != {"mean", "x"}:
            continue
        x_mul, x_position = roles["x"]
        mean_node, mean_position = roles["mean"]
        site = NonFusedSite(
            input=index.inputs(node(x_mul), function)[x_position],
            mean_use=roles["mean"],
            variance_use=(add.name, non_const[0]),
            mean=index.inputs(node(mean_node), function)[mean_position],
            variance=add_inputs[non_const[0]],
        )
        means = _variables_behind(index, site.mean) or _variables_updated_from(index, site.mean)
        variances = _variables_behind(index, site.variance) or _variables_updated_from(index, site.variance)
        # hand-written tf.cond(training, batch moments, population variables): each branch reads the layer's input
        # through its own Switch (TF1) or as the If's argument (TF2); the layer's input is the one tensor both read
        x = index.to_top_level(_through_switch(index, site.input))
        if (means or variances) and x is not None:  # no moving statistics: layer/instance norm, not BN
            candidates.append(_Candidate(x, means, variances, site=site))
    return candidates


#: the last component of a mean variable's name that its scope names the layer by: ``moving_mean`` (slim,
#: tf.layers, Keras), ``pop_mean`` / ``population_mean`` / ``running_mean`` (hand-written BN)
_MEAN_VARIABLE = re.compile(r"^(moving|pop|population|running)_mean(_\d+)?$")


def _constant(index: GraphIndex, tensor: Tensor) -> float | None:
    from tensorflow.python.framework import tensor_util

    node = index.node(tensor.node)
    if node is None or node.op != "Const":
        return None
    value = tensor_util.MakeNdarray(node.attr["value"].tensor)
    return float(value) if value.size == 1 else None


def _zero_debias(index: GraphIndex, mean_variable: str) -> ZeroDebias | None:
    """The companions of a debiased moving mean (:class:`ZeroDebias`), from its update op's arithmetic
    (``moving_averages.assign_moving_average(zero_debias=True)``)::

        Assign(moving_mean, RealDiv(AssignSub(biased, ...), Sub(1, Pow(Sub(1, 1 - decay), AssignAdd(local_step, 1)))))
    """
    def producer(tensor: Tensor, ops: frozenset | set):
        node = index.node(tensor.node)
        return node if node is not None and node.op in ops else None

    for user, position in index.consumers.get(f"{mean_variable}:0", []):
        assign = index.nodes[user]
        if assign.op != "Assign" or position != 0:
            continue
        divide = producer(index.inputs(assign)[1], {"RealDiv"})
        moved = divide and producer(index.inputs(divide)[0], {"AssignSub"})
        debias = divide and producer(index.inputs(divide)[1], {"Sub"})
        power = debias and producer(index.inputs(debias)[1], {"Pow"})
        counted = power and producer(index.inputs(power)[1], {"AssignAdd"})
        base = power and producer(index.inputs(power)[0], {"Sub"})
        if not (moved and counted and base):
            continue
        one, rate = (_constant(index, t) for t in index.inputs(base))
        biased, local_step = _variables_behind(index, index.inputs(moved)[0]), _variables_behind(index, index.inputs(counted)[0])
        if one == 1.0 and rate is not None and len(biased) == 1 and len(local_step) == 1:
            return ZeroDebias(biased.pop(), local_step.pop(), 1.0 - rate)
    return None


def _virtual_batch_size(index: GraphIndex, x: Tensor) -> int | None:
    """V when ``x`` is ghost BN's reshape of its input to ``[V, -1, ...]`` (tf.compat.v1.layers / tf_keras
    ``virtual_batch_size``: ``Reshape(inputs, concat([[V, -1], shape(inputs)[1:]]))``), else None."""
    from tensorflow.python.framework import tensor_util

    node = index.node(x.node, x.function)
    if node is None or node.op != "Reshape" or x.function is not None:
        return None
    shape = index.node(index.inputs(node)[1].node)
    if shape is None or shape.op != "ConcatV2":
        return None
    head = index.node(index.inputs(shape)[0].node)
    if head is None or head.op != "Const":
        return None
    value = tensor_util.MakeNdarray(head.attr["value"].tensor).reshape(-1).tolist()
    return int(value[0]) if len(value) == 2 and value[1] == -1 and value[0] > 0 else None


def _layer_name(mean_variable: str) -> str:
    scope, _, last = mean_variable.rpartition("/")
    return scope if _MEAN_VARIABLE.match(last) and scope else mean_variable


def find_batchnorm_layers(index: GraphIndex, folded: list[str] | None = None) -> list[BatchNormLayer]:
    """Every BN layer of the graph, in graph order of first appearance; raises GraphError on BN it cannot map.

    With a ``folded`` list, inference-mode fused nodes whose statistics are constants (no variable behind
    them) are appended to it by name and left out instead of raising."""
    candidates = _fused_candidates(index) + _nonfused_candidates(index)
    for candidate in candidates:
        for kind, found in (("moving_mean", candidate.mean_variables), ("moving_variance", candidate.variance_variables)):
            if len(found) > 1:
                raise GraphError(
                    f"BN node {candidate.label} reads several possible {kind} variables ({', '.join(sorted(found))})."
                )
    by_input: dict[Tensor, tuple[str, str]] = {}
    for candidate in candidates:
        if candidate.mean_variables and candidate.variance_variables:
            by_input[candidate.input] = (min(candidate.mean_variables), min(candidate.variance_variables))
    layers: dict[tuple[str, str], BatchNormLayer] = {}
    for candidate in candidates:
        key = by_input.get(candidate.input)
        constant = key is None and not (candidate.mean_variables or candidate.variance_variables)
        if folded is not None and constant and candidate.fused is not None and not candidate.fused.is_training:
            folded.append(candidate.label)
            continue
        if not (candidate.mean_variables and candidate.variance_variables) and key is None:
            raise GraphError(
                f"cannot find the moving_mean/moving_variance variables of BN node {candidate.label}; "
                "ckptfix does not handle this BN layer. Please report the graph."
            )
        if candidate.mean_variables and candidate.variance_variables:
            key = (min(candidate.mean_variables), min(candidate.variance_variables))
        kind = "fused" if candidate.fused else "non-fused"
        layer = layers.setdefault(key, BatchNormLayer(_layer_name(key[0]), kind, *key))
        if layer.kind != kind:
            raise GraphError(f"BN layer {layer.name} mixes fused and non-fused nodes; ckptfix cannot handle it.")
        if candidate.input not in layer.inputs:
            layer.inputs.append(candidate.input)
        if candidate.fused:
            layer.fused_nodes.append(candidate.fused)
        else:
            layer.nonfused_sites.append(candidate.site)
            layer.virtual_batch_size = layer.virtual_batch_size or _virtual_batch_size(index, candidate.site.input)
    for layer in layers.values():
        layer.zero_debias = _zero_debias(index, layer.mean_variable)
    return sorted(layers.values(), key=lambda layer: _graph_position(index, layer))


def _graph_position(index: GraphIndex, layer: BatchNormLayer) -> int:
    """Where a layer first appears among the top-level nodes (a branch function counts at its If op)."""
    names = [name for site in layer.nonfused_sites
             for name in ([site.mean_use[0]] if site.function is None else index.call_sites[site.function])]
    for fused in layer.fused_nodes:
        names.extend([fused.node] if fused.function is None else index.call_sites[fused.function])
    return min(index.position[name] for name in names)




def statistics_in_branches(index: GraphIndex, found: list[BatchNormLayer]) -> list[str]:
    """Variance variables (op names, sorted) read by non-fused BN arithmetic inside the branch functions of ``If`` /
    ``StatelessIf`` ops (TF2 control flow) and by no layer in ``found``: BN that :func:`find_batchnorm_layers` leaves
    out because the tensor it normalises is computed inside the function (a conv and its BN both in a
    ``tf.cond`` branch), so no top-level tensor can be measured. A site is ``Rsqrt(variance + eps)`` whose variance is
    read from a variable (layer and instance norm read none)."""
    known = {layer.variance_variable for layer in found}
    hidden: set[str] = set()
    for function, definition in index.functions.items():
        if not index.call_sites.get(function):
            continue
        for node in definition.node_def:
            if node.op != "Rsqrt":
                continue
            add = index.node(index.inputs(node, function)[0].node, function)
            if add is None or add.op not in {"Add", "AddV2"}:
                continue
            for term in index.inputs(add, function):
                producer = index.node(term.node, function)
                if producer is None or producer.op != "Const":
                    hidden |= _variables_behind(index, term) - known
    return sorted(hidden)


def layer_tensors(index: GraphIndex, layers: list[BatchNormLayer]) -> list[Tensor]:
    """Top-level tensors the layers' normalisation depends on: inputs, BN nodes (or the If ops holding them),
    and the mean/variance non-fused arithmetic reads."""
    tensors = [t for layer in layers for t in layer.inputs]
    for layer in layers:
        for fused in layer.fused_nodes:
            if fused.function is None:
                tensors.append(Tensor(fused.node))
            else:
                tensors.extend(Tensor(site) for site in index.call_sites[fused.function])
        for site in layer.nonfused_sites:
            if site.function is None:
                tensors.extend([site.mean, site.variance])
            else:
                tensors.extend(Tensor(call) for call in index.call_sites[site.function])
    return tensors
