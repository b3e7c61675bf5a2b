"""Why the statistics went stale, read from the training graph a ``.meta`` keeps: does the train op run the BN
update ops?

Pure graph analysis (protos only, nothing is imported into TensorFlow or run). Definitions:

* **train op**: the ops in the ``train_op`` collection (``Optimizer.minimize`` / ``apply_gradients`` and
  ``slim.learning.create_train_op`` register theirs; of several, the one that runs the most), else the
  optimizer's step: a global-step increment that runs the ``Apply*`` / ``ResourceApply*`` ops, else the
  smallest op that runs all of them.
* **BN update ops**: the assignments to a BN layer's ``moving_mean`` / ``moving_variance``
  (``AssignSub`` / ``AssignSubVariableOp`` / ``AssignAdd*``, named ``AssignMovingAvg`` by TF1, slim and
  tf.layers; inside a ``tf.cond`` branch or in the branch function of an ``If`` op, which then stands for it),
  plus every op of the ``update_ops`` collection. A collection *holds* an update op when one of its members
  runs it (a ``tf.cond``'s ``Merge`` runs the assignment of its branch).
* **runs**: the update op lies in the train op's transitive closure over data and control inputs.

Only what the graph proves is claimed: a train op whose closure misses update ops is named with the ops it
misses and the BN layers whose statistics they update; the graph cannot say whether the training loop ran them some other way (``sess.run([train_op,
update_ops])``), so ops that run the train op together with the missing updates are listed as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckptfix.errors import GraphError
from ckptfix.graph.batchnorm import VARIABLE_OPS, _variables_behind, find_batchnorm_layers
from ckptfix.graph.index import IF_OPS, GraphIndex, Tensor, is_gradient

UPDATE_OPS_NOT_RUN = "update-ops-not-run"
CUSTOM_COLLECTION_NOT_RUN = "custom-updates-collection-not-run"
UPDATE_OPS_RUN = "update-ops-run"
NO_TRAIN_OP = "no-train-op"
UNKNOWN = "unknown"
#: the codes that name a cause of stale statistics
FOUND_CODES = frozenset({UPDATE_OPS_NOT_RUN, CUSTOM_COLLECTION_NOT_RUN})

UPDATE_OPS_KEY = "update_ops"  # tf.compat.v1.GraphKeys.UPDATE_OPS
TRAIN_OP_KEY = "train_op"  # tf.compat.v1.GraphKeys.TRAIN_OP
# collections that may reach update ops without holding them (a loss computed after in-place updates)
_NOT_UPDATE_COLLECTIONS = frozenset({TRAIN_OP_KEY, "losses", "regularization_losses", "summaries"})
_UPDATE_ASSIGNS = frozenset({"AssignSub", "AssignSubVariableOp", "AssignAdd", "AssignAddVariableOp"})
_APPLY_PREFIXES = ("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply")
#: how a TF1 training script makes its train op run the update ops (the guards' messages say it too)
FIX = ("build the train op inside `with tf.control_dependencies(tf.compat.v1.get_collection("
        "tf.compat.v1.GraphKeys.UPDATE_OPS)):`, or with `slim.learning.create_train_op`")


@dataclass(frozen=True)
class Cause:
    """The cause :func:`find_cause` reads from a training graph (codes: see the module constants)."""

    code: str
    message: str
    train_op: str | None = None
    update_ops: list[str] = field(default_factory=list)  # BN update ops the train op never runs
    evidence: list[str] = field(default_factory=list)  # op names that show it
    layers: list[str] = field(default_factory=list)  # the BN layers whose statistics those update ops update
    runners: list[str] = field(default_factory=list)  # ops that run the train op together with those update ops

    @property
    def found(self) -> bool:
        """Whether the graph names a cause of stale statistics."""
        return self.code in FOUND_CODES

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "train_op": self.train_op,
                "update_ops": list(self.update_ops), "evidence": list(self.evidence), "layers": list(self.layers)}


def _node_name(text: str) -> str:
    return text.lstrip("^").split(":")[0]


class _Closure:
    """Transitive closures over the top-level data and control inputs, and the consumers of each node."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.consumers: dict[str, set[str]] = {}
        for node in index.nodes.values():
            for text in node.input:
                self.consumers.setdefault(_node_name(text), set()).add(node.name)

    def of(self, starts) -> set[str]:
        seen: set[str] = set()
        stack = [name for name in starts if name in self.index.nodes]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(_node_name(text) for text in self.index.nodes[name].input)
        return seen

    def downstream(self, *starts: str) -> set[str]:
        """``starts`` and every node that depends on one of them."""
        seen: set[str] = set()
        stack = list(starts)
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(self.consumers.get(name, ()))
        return seen


def _collection(meta_graph_def, key: str) -> list[str]:
    if key not in meta_graph_def.collection_def:
        return []
    return list(dict.fromkeys(_node_name(v) for v in meta_graph_def.collection_def[key].node_list.value))


def _statistics_layers(index: GraphIndex) -> dict[str, str]:
    """The variable op of every BN layer's moving mean and variance -> the layer's name (by variable name, the
    layer its scope, when the BN search fails)."""
    try:
        return {v: layer.name for layer in find_batchnorm_layers(index)
                for v in (layer.mean_variable, layer.variance_variable)}
    except GraphError:
        return {
            node.name: node.name.rsplit("/", 1)[0] for node in index.nodes.values()
            if node.op in VARIABLE_OPS and node.name.rsplit("/", 1)[-1].startswith(("moving_mean", "moving_variance"))
        }


def _update_assignments(index: GraphIndex, statistics) -> dict[str, set[str]]:
    """Top-level ops that assign to moving statistics, in graph order (an If op for an assignment in its branch),
    each with the statistics variables it assigns."""
    found: dict[str, set[str]] = {}
    scopes = [(None, index.graph_def.node)] + [(name, f.node_def) for name, f in index.functions.items()]
    for function, nodes in scopes:
        for node in nodes:
            if node.op not in _UPDATE_ASSIGNS or is_gradient(node.name):
                continue
            assigned = _variables_behind(index, index.inputs(node, function)[0]) & set(statistics)
            if assigned:
                for name in [node.name] if function is None else index.call_sites.get(function, []):
                    found.setdefault(name, set()).update(assigned)
    return {name: found[name] for name in sorted(found, key=index.position.__getitem__)}


def updated_statistics(index: GraphIndex) -> dict[str, set[str]]:
    """Every BN layer some op of the graph updates (one in inference mode has no update op) -> the variable ops of
    its moving statistics that are updated; in graph order."""
    layers = _statistics_layers(index)
    updated: dict[str, set[str]] = {}
    for variables in _update_assignments(index, layers).values():
        for variable in variables:
            updated.setdefault(layers[variable], set()).add(variable)
    return updated


def optimized_variables(index: GraphIndex) -> list[str]:
    """The variable ops the optimizer's ``Apply*`` / ``ResourceApply*`` ops update (the weights training moves)."""
    found: dict[str, None] = {}
    for node in index.nodes.values():
        if node.op.startswith(_APPLY_PREFIXES) and not is_gradient(node.name):
            found.update(dict.fromkeys(sorted(_variables_behind(index, Tensor(_node_name(node.input[0]))))))
    return list(found)


def _train_ops(meta_graph_def, index: GraphIndex, closure: _Closure) -> tuple[list[str], list[str]]:
    """The train op candidates (outermost first) and the ops that identified them."""
    collected = [name for name in _collection(meta_graph_def, TRAIN_OP_KEY) if name in index.nodes]
    if collected:
        return sorted(collected, key=lambda name: -len(closure.of([name]))), []
    applies = [
        node.name for node in index.nodes.values()
        if node.op.startswith(_APPLY_PREFIXES) and not is_gradient(node.name)
    ]
    if not applies:
        return [], []
    steps = set(_collection(meta_graph_def, "global_step")) | {
        node.name for node in index.nodes.values() if node.op in VARIABLE_OPS and node.name.endswith("global_step")
    }
    downstream = closure.downstream(*applies)
    covering = [name for name in downstream if set(applies) <= closure.of([name])]
    increments = [
        name for name in covering
        if index.nodes[name].op in {"AssignAdd", "AssignAddVariableOp"}
        and _variables_behind(index, Tensor(_node_name(index.nodes[name].input[0]))) & steps
    ]
    chosen = increments or covering
    return sorted(chosen, key=lambda name: len(closure.of([name])))[:1], applies


def find_cause(meta_graph_def, index: GraphIndex | None = None) -> Cause:
    """Whether the training graph's train op runs its BN update ops (see the module docstring); ``index``: of
    ``meta_graph_def.graph_def``, when the caller has one."""
    index = index if index is not None else GraphIndex(meta_graph_def.graph_def)
    closure = _Closure(index)
    candidates, identified_by = _train_ops(meta_graph_def, index, closure)
    if not candidates:
        return Cause(NO_TRAIN_OP, "unknown: the .meta holds no train op (an inference or export graph); only the "
                                  "training graph's .meta can show whether the BN update ops ran.")
    train_op = candidates[0]
    runs = closure.of([train_op])
    evidence = [train_op, *candidates[1:], *identified_by[:3]]  # a few of the optimizer's apply ops
    layer_of = _statistics_layers(index)
    assigned = _update_assignments(index, layer_of)
    assignments = list(assigned)
    # members of UPDATE_OPS that run none of the recognised assignments are update ops of their own
    running_one = closure.downstream(*assignments)  # the nodes that run a recognised assignment
    update_ops = assignments + [
        name for name in _collection(meta_graph_def, UPDATE_OPS_KEY)
        if name in index.nodes and name not in running_one
    ]
    if not update_ops:
        return Cause(UNKNOWN, f"unknown: the train op {train_op} exists, but the graph holds no op that updates "
                              "the BN moving statistics, so it cannot show how they were meant to be updated.",
                     train_op, [], evidence)
    missed = [name for name in update_ops if name not in runs]
    layers = list(dict.fromkeys(layer_of[v] for name in missed for v in sorted(assigned.get(name, ()))))
    if not missed:
        return Cause(UPDATE_OPS_RUN, f"the train op {train_op} runs all {len(update_ops)} BN update ops: the graph "
                                     "shows no cause (were the statistics computed on other data?).",
                     train_op, [], evidence)
    holders = _holding_collections(meta_graph_def, closure, missed)
    runners = [
        name for name in closure.downstream(train_op)
        if not closure.consumers.get(name) and name != train_op and set(missed) <= closure.of([name])
    ]
    evidence += sorted(runners)
    if runners and identified_by:  # no train_op collection says which of them training ran
        return Cause(UNKNOWN, f"unknown: the optimizer step {train_op} never runs {len(missed)} BN update ops, "
                              f"but {', '.join(sorted(runners))} runs both; the graph does not show which one training "
                              "ran.", train_op, missed, evidence, layers, sorted(runners))
    caveat = f" ({', '.join(sorted(runners))} runs both: if training ran that, look elsewhere)" if runners else ""
    of_layers = f" of {_layers_named(layers)}" if layers else ""
    custom = sorted(key for key in holders if key != UPDATE_OPS_KEY)
    if custom and UPDATE_OPS_KEY not in holders:
        key = custom[0]
        return Cause(
            CUSTOM_COLLECTION_NOT_RUN,
            f"the train op {train_op} never runs the {len(missed)} BN update ops{of_layers} of the custom collection "
            f"'{key}' (slim.batch_norm updates_collections){caveat}.\nFix the training script: build the train op "
            f"inside `with tf.control_dependencies(tf.compat.v1.get_collection('{key}')):`, or pass "
            f"`update_ops=tf.compat.v1.get_collection('{key}')` to `slim.learning.create_train_op`.",
            train_op, missed, evidence, layers, sorted(runners))
    where = "" if holders else " (held by no collection: make the train op depend on them)"
    return Cause(
        UPDATE_OPS_NOT_RUN,
        f"the train op {train_op} never runs the {len(missed)} BN update ops{of_layers}{where}, so the moving "
        f"statistics never followed training{caveat}.\nFix the training script: {FIX}.",
        train_op, missed, evidence, layers, sorted(runners))


def _layers_named(layers: list[str]) -> str:
    """``2 BN layers (conv1/BatchNorm, conv2/BatchNorm)``, the first few named."""
    from ckptfix.data.batching import name_few

    return f"{len(layers)} BN layer{'s' if len(layers) != 1 else ''} ({name_few(layers)})"


def _holding_collections(meta_graph_def, closure: _Closure, update_ops: list[str]) -> set[str]:
    """Names of the node-list collections some of whose members run some of ``update_ops``."""
    wanted = set(update_ops)
    holders = set()
    for key, collection in meta_graph_def.collection_def.items():
        if key in _NOT_UPDATE_COLLECTIONS or not collection.HasField("node_list"):
            continue
        if closure.of(_collection(meta_graph_def, key)) & wanted:
            holders.add(key)
    return holders
