"""The TF1 guard: a ``SessionRunHook`` for ``MonitoredTrainingSession``, ``tf_slim.training.train`` and
``tf.estimator`` (on TensorFlow versions that ship it; 2.16+ do not), and a ``train_step_fn`` for
``slim.learning.train``.

At ``begin()`` it reads the graph as ``ckptfix check`` does (:func:`~ckptfix.diagnostics.cause.find_cause`): a
train op proven never to run the BN update ops stops training before the first step, with ``inspect``'s
message. Then every ``every_n_steps`` session runs it reads the moving statistics of each BN layer that has
update ops (a layer in inference mode has none) and the smallest few variables the optimizer updates, in one
``session.run`` of existing tensors (no op is added: the graph may be finalized), and applies the rule of
:mod:`ckptfix.guard.core`.
"""

from __future__ import annotations

import warnings

import tensorflow as tf

from ckptfix.diagnostics.cause import FIX, UPDATE_OPS_RUN, find_cause, optimized_variables, updated_statistics
from ckptfix.errors import GraphError
from ckptfix.graph.index import GraphIndex
from ckptfix.guard.core import (DEFAULT_EVERY_N_STEPS, Guard, Guarded, Reading, Verdict, excluded, failure_message,
                                smallest)


def _meta_graph(graph):
    """A MetaGraphDef of ``graph`` with its op and tensor collections (what :func:`find_cause` reads), built
    without ``export_meta_graph``'s warnings about collections it cannot serialize; adds nothing to ``graph``."""
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.graph_def.CopyFrom(graph.as_graph_def())
    for key in graph.get_all_collection_keys():
        items = graph.get_collection(key)
        if isinstance(key, str) and items and all(isinstance(i, (tf.Operation, tf.Tensor)) for i in items):
            meta.collection_def[key].node_list.value.extend(item.name for item in items)
    return meta


class _Plan:
    """What the guard reads in ``graph``: each watched layer's statistics variables, and the watched weights."""

    def __init__(self, graph, exclude: str | None, check_graph: bool) -> None:
        meta = _meta_graph(graph)
        index = GraphIndex(meta.graph_def)
        self.cause = find_cause(meta, index) if check_graph else None
        variables = {}
        for key in (tf.compat.v1.GraphKeys.GLOBAL_VARIABLES, tf.compat.v1.GraphKeys.LOCAL_VARIABLES):
            variables.update({v.op.name: v for v in graph.get_collection(key)})
        updated = updated_statistics(index)
        self.total = len(updated)
        self.layers = {
            name: [variables[v] for v in sorted(updated[name]) if v in variables]
            for name in excluded(list(updated), exclude)
        }
        self.layers = {name: found for name, found in self.layers.items() if found}
        trained = [variables[v] for v in optimized_variables(index) if v in variables]
        trained = trained or graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)
        sizes = [v.shape.num_elements() if v.shape.is_fully_defined() else 2**62 for v in trained]
        self.weights = [trained[i] for i in smallest(sizes)]
        self.fetches = [v for found in self.layers.values() for v in found] + self.weights

    def read(self, session, step: int) -> Reading:
        values = session.run(self.fetches)
        statistics, k = {}, 0
        for name, found in self.layers.items():
            statistics[name], k = values[k:k + len(found)], k + len(found)
        return Reading(step, statistics, values[k:])


class BatchNormGuardHook(Guarded, tf.compat.v1.train.SessionRunHook):
    """Stops TF1 training whose BN moving statistics are not updated (:mod:`ckptfix.guard.core` has the rule).

    ``every_n_steps``: session runs between reads (the documented bound: a buggy loop whose first steps train is
    stopped at the end of step ``every_n_steps``); ``warn_only``: warn instead of raising
    :class:`~ckptfix.errors.StatisticsNotUpdated`; ``exclude``: a regex of BN layer scopes not to watch (layers
    run in training mode on purpose without updates); ``check_graph``: read the graph at ``begin()``.

    ``slim.learning.train``, which takes no hooks: pass ``train_step_fn=hook.train_step``.
    """

    def __init__(self, every_n_steps: int = DEFAULT_EVERY_N_STEPS, warn_only: bool = False,
                 exclude: str | None = None, check_graph: bool = True) -> None:
        self._guard = Guard(every_n_steps, warn_only)
        self.exclude, self.check_graph = exclude, check_graph
        self._plan: _Plan | None = None
        self._began = False

    def begin(self) -> None:
        self._begin(tf.compat.v1.get_default_graph())

    def _begin(self, graph) -> None:
        self._began = True
        try:
            self._plan = _Plan(graph, self.exclude, self.check_graph)
        except GraphError as error:
            warnings.warn(f"ckptfix guard: off, the graph cannot be analysed: {error}", stacklevel=3)
            self._plan = None
            return
        cause = self._plan.cause
        if cause is not None and cause.found and not cause.runners:
            # proven from the graph: nothing else runs the train op together with the missed update ops
            self._guard.fail(f"ckptfix guard: {cause.message}", ("graph",))
        if not self._plan.layers:
            why = ("the graph has no BN layer with update ops (none, or all in inference mode)" if not self._plan.total
                   else "every BN layer with update ops is excluded")
            warnings.warn(f"ckptfix guard: off, {why}", stacklevel=3)
            self._plan = None

    def after_create_session(self, session, coord) -> None:
        if self._plan is not None:
            self._guard.start(lambda step: self._plan.read(session, step))

    def after_run(self, run_context, run_values) -> None:
        if self._plan is not None:
            self._guard.after_step(lambda step: self._plan.read(run_context.session, step), self._explain)

    def _explain(self, verdict: Verdict) -> str:
        cause = self._plan.cause
        if cause is not None and cause.code == UPDATE_OPS_RUN:
            return failure_message(
                verdict, len(self._plan.layers),
                f"the train op {cause.train_op} runs their update ops, yet they changed nothing",
                "give the BN layers a decay (momentum) below 1, e.g. slim.batch_norm's 0.999, and feed a "
                "training-flag tensor True while training.")
        return failure_message(verdict, len(self._plan.layers),
                               "the session runs that trained the weights never ran their update ops", FIX + ".")

    def train_step(self, sess, train_op, global_step, train_step_kwargs):
        """``slim.learning.train``'s ``train_step_fn``: slim's own ``train_step``, guarded."""
        from tf_slim.learning import train_step

        if not self._began:
            self._begin(sess.graph)
            self.after_create_session(sess, None)
        result = train_step(sess, train_op, global_step, train_step_kwargs)
        if self._plan is not None:
            self._guard.after_step(lambda step: self._plan.read(sess, step), self._explain)
        return result
