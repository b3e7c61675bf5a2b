"""The frozen model, rewritten so that the selected BN layers normalise with batch statistics, in a session.

The rewrite happens on a copy of the GraphDef before import (the caller's MetaGraphDef is never changed):

* fused BN nodes saved in inference mode (``is_training=False``: the inference branch of a ``tf.cond``, or a
  graph exported for evaluation) get ``is_training=True`` and ``exponential_avg_factor=1``, so they
  normalise with the batch's statistics;
* non-fused BN arithmetic is rewired to read batch moments computed here instead of the moving ones;
* devices are cleared, so TensorFlow places the graph on whatever the machine has (a GPU when there is one);
* backprop (``gradients`` scopes and what depends on them: optimizer updates, the train op) is dropped, so
  importing and placing a training script's graph costs only its forward part.

The training flag, when there is one, is fed False, so every other layer (dropout) keeps inference behaviour.

Per batch, for every BN input ``x`` of a selected layer, three per-channel values are fetched -- ``count``,
``mean`` and ``M2 = sum((x - mean)**2)`` over all axes but the channel axis, in float32 -- for all layers in
one ``session.run``; only these vectors leave the device. Where they come from:

* a fused node that runs in training mode with ``exponential_avg_factor=1`` already computes them: its
  outputs 1 and 2 are the batch mean and the Bessel-corrected batch variance over ``n = N*H*W`` values per
  channel, so no reduction is added; the size of ``x`` is fetched with them and ``M2 = variance * (n - 1)``
  is formed on the host in float64. This holds for a top-level node fed ``x``
  directly, for the false-branch node of a TF1 ``tf.cond`` on the training flag (fed False, so that branch
  runs; the other branch's outputs cannot be fetched), and for a node in the ``else_branch`` of an ``If`` on
  the training flag, whose outputs the ``If`` returns;
* otherwise (non-fused BN, a node in a branch that is not known to run) they are reduced from ``x`` here:
  ``reduce_mean`` and ``reduce_sum`` of squared deviations.

Update ops are never fetched, so nothing in the session's variables changes what is written (the new values
come from the pooled moments). The checkpoint is restored with the graph's own saver (every variable, optimizer
slots included: restoring only the forward variables was measured and saved nothing noticeable).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ckptfix.data.spec import InputSpec
from ckptfix.errors import DataError, GraphError
from ckptfix.graph.batchnorm import BatchNormLayer
from ckptfix.graph.feeds import Feeds
from ckptfix.graph.index import IF_OPS, is_gradient
from ckptfix.graph.session import SessionModel, clear_devices, editable_nodes, first_line, import_graph, restore
from ckptfix.stats import BatchMoments

_IDENTITY_OPS = frozenset({"Identity", "RefIdentity", "Snapshot"})
_SWITCH_OPS = frozenset({"Switch", "RefSwitch"})


class _Moments(NamedTuple):
    """Graph tensors (or their fetched values) of one BN input's batch moments."""

    count: object
    mean: object
    m2: object
    #: read off a fused node: ``count`` is the size of ``x`` (all channels) and ``m2`` the Bessel-corrected
    #: variance; :meth:`ForwardModel.run` turns them into the per-channel count and M2 (no graph ops needed)
    fused: bool = False


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


def _rewrite_graph_def(meta_graph, layers: list[BatchNormLayer]):
    """A copy of the graph without backprop, with devices cleared and the layers' inference-mode fused nodes
    switched to training mode."""
    graph_def = _without_backprop(meta_graph.graph_def)
    clear_devices(graph_def)
    scopes = editable_nodes(graph_def)
    for layer in layers:
        for fused in layer.fused_nodes:
            if not fused.is_training:
                node = scopes[fused.function][fused.node]
                node.attr["is_training"].b = True
                node.attr["exponential_avg_factor"].f = 1.0
    return graph_def


def _moments(x, channels_last: bool | None, reference_shape=None) -> _Moments:
    """Per-channel count/mean/M2 of ``x``; the channel axis from the layout, or from ``reference_shape``.

    ``reference_shape`` (non-fused BN) is the static shape of the mean the layer broadcasts against ``x``:
    aligned to ``x``'s trailing axes, its dimensions other than 1 are the channel axes.
    """
    import tensorflow as tf

    rank = x.shape.rank
    if rank is None:
        raise GraphError(f"BN input {x.name} has unknown rank; ckptfix needs a static rank.")
    if reference_shape is None:
        channel_axes = {rank - 1} if channels_last else {1}
    else:
        dims = reference_shape.as_list()
        if None in dims:
            raise GraphError(f"the statistics of BN input {x.name} have an unknown static shape.")
        offset = rank - len(dims)
        channel_axes = {offset + i for i, d in enumerate(dims) if d != 1}
    axes = [a for a in range(rank) if a not in channel_axes]
    values = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(values, axis=axes, keepdims=True)
    m2 = tf.reduce_sum(tf.square(values - mean), axis=axes, keepdims=True)
    count = tf.size(values, out_type=tf.int64) // tf.size(mean, out_type=tf.int64)
    return _Moments(count, mean, m2)


def _through_identity(tensor):
    while tensor.op.type in _IDENTITY_OPS:
        tensor = tensor.op.inputs[0]
    return tensor


def _computes_batch_statistics(attrs) -> bool:
    """Whether a fused node's outputs 1 and 2 are the batch mean and (Bessel-corrected) variance.

    True in training mode with ``exponential_avg_factor`` 1 (absent: the op default, 1); with another factor
    (Keras' fused moving-average update) they are already averaged with the moving statistics.
    """
    is_training = attrs["is_training"].b if "is_training" in attrs else True
    factor = attrs["exponential_avg_factor"].f if "exponential_avg_factor" in attrs else 1.0
    return is_training and factor == 1.0


class ForwardModel(SessionModel):
    """The rewritten graph restored from a checkpoint; :meth:`run` returns each layer's batch moments.

    Closed on leaving its context (see :class:`SessionModel`).
    """

    def __init__(self, meta_graph, layers: list[BatchNormLayer], feeds: Feeds, checkpoint_prefix: str) -> None:
        import tensorflow as tf

        self.layers = layers
        graph_def = _rewrite_graph_def(meta_graph, layers)
        self._functions = {function.signature.name: function for function in graph_def.library.function}
        self.graph = import_graph(graph_def)
        with self.graph.as_default():
            self.inputs = [self.graph.get_tensor_by_name(name) for name in feeds.inputs]
            self.training_flag = None if feeds.training_flag is None else self.graph.get_tensor_by_name(feeds.training_flag)
            self._else_callers: dict[str, list] = {}
            for op in self.graph.get_operations():
                if op.type in IF_OPS:
                    self._else_callers.setdefault(op.get_attr("else_branch").name, []).append(op)
            with tf.compat.v1.name_scope("ckptfix"):
                self._fetches = {layer.name: self._layer_moments(layer) for layer in layers}
            self.session = tf.compat.v1.Session(graph=self.graph)
        restore(self.session, meta_graph.saver_def, checkpoint_prefix)
        self._names = list(self._fetches)
        self._fused = [[m.fused for m in self._fetches[name]] for name in self._names]
        feed_list = self.inputs + ([self.training_flag] if self.training_flag is not None else [])
        # One callable, one run per batch: every layer's (count, mean, M2) fetched together, flat.
        self._run = self.session.make_callable(
            [tensor for name in self._names for moments in self._fetches[name] for tensor in moments[:3]],
            feed_list=feed_list,
        )

    def _layer_moments(self, layer: BatchNormLayer) -> list[_Moments]:
        import tensorflow as tf

        by_input = {}
        for site in layer.nonfused_sites:
            mean_tensor = self.graph.get_tensor_by_name(site.mean.name)
            variance_tensor = self.graph.get_tensor_by_name(site.variance.name)
            moments = by_input.get(site.input)
            if moments is None:
                x = self.graph.get_tensor_by_name(site.input.name)
                moments = by_input[site.input] = _moments(x, None, mean_tensor.shape)
            batch_mean = tf.reshape(tf.cast(moments.mean, mean_tensor.dtype), tf.shape(mean_tensor))
            batch_variance = tf.reshape(
                tf.cast(moments.m2 / tf.cast(moments.count, tf.float32), variance_tensor.dtype),
                tf.shape(variance_tensor),
            )
            self.graph.get_operation_by_name(site.mean_use[0])._update_input(site.mean_use[1], batch_mean)
            self.graph.get_operation_by_name(site.variance_use[0])._update_input(site.variance_use[1], batch_variance)
        for tensor in layer.inputs:
            if tensor not in by_input:
                x = self.graph.get_tensor_by_name(tensor.name)
                by_input[tensor] = self._fused_moments(layer, x) or _moments(x, layer.channels_last)
        return [
            m if m.fused else _Moments(m.count, tf.reshape(m.mean, [-1]), tf.reshape(m.m2, [-1]))
            for m in by_input.values()
        ]

    def _is_training_flag(self, tensor) -> bool:
        return self.training_flag is not None and _through_identity(tensor) is self.training_flag

    def _fused_moments(self, layer: BatchNormLayer, x) -> _Moments | None:
        """The moments of ``x`` read off a fused node of ``layer`` that normalises ``x`` and runs; else None."""
        import tensorflow as tf

        for fused in layer.fused_nodes:
            outputs = self._fused_statistics(fused, x)
            if outputs is not None:
                return _Moments(tf.size(x, out_type=tf.int64), outputs[0], outputs[1], fused=True)
        return None

    def _fused_statistics(self, fused, x):
        """(batch mean, batch variance) tensors of a fused node fed ``x`` that runs with the flag fed False."""
        if fused.function is None:
            op = self.graph.get_operation_by_name(fused.node)
            if not _computes_batch_statistics(op.node_def.attr):
                return None
            source = _through_identity(op.inputs[0])
            if source.op.type in _SWITCH_OPS:  # a TF1 tf.cond branch: output 0 is the branch taken on False
                if source.value_index != 0 or not self._is_training_flag(source.op.inputs[1]):
                    return None
                source = _through_identity(source.op.inputs[0])
            return (op.outputs[1], op.outputs[2]) if source is x else None
        # Inside the branch function of an If op: the else branch runs on False, and the If returns its outputs.
        function = self._functions.get(fused.function)
        callers = self._else_callers.get(fused.function, [])
        if function is None or len(callers) != 1 or not self._is_training_flag(callers[0].inputs[0]):
            return None
        node = next((n for n in function.node_def if n.name == fused.node), None)
        if node is None or not _computes_batch_statistics(node.attr):
            return None
        arguments = [arg.name for arg in function.signature.input_arg]
        if node.input[0] not in arguments:
            return None
        if _through_identity(callers[0].inputs[1 + arguments.index(node.input[0])]) is not x:
            return None
        returned = {function.ret[arg.name]: k for k, arg in enumerate(function.signature.output_arg)}
        mean_k = returned.get(f"{fused.node}:batch_mean:0")
        variance_k = returned.get(f"{fused.node}:batch_variance:0")
        if mean_k is None or variance_k is None:
            return None
        return callers[0].outputs[mean_k], callers[0].outputs[variance_k]

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        return None if self.input.shape.rank is None else tuple(self.input.shape.as_list())

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input.dtype.as_numpy_dtype)

    @property
    def input_specs(self) -> list[InputSpec]:
        """What each input takes (tensor name, static shape, dtype), in the order of ``inputs``."""
        return [
            InputSpec(t.name, None if t.shape.rank is None else tuple(t.shape.as_list()), np.dtype(t.dtype.as_numpy_dtype))
            for t in self.inputs
        ]

    def run(self, batch) -> dict[str, list[BatchMoments]]:
        """Forward one batch (an array, or a dict keyed by input tensor name); per layer, the moments of each
        of its BN inputs."""
        import tensorflow as tf

        arrays = self.input_values(batch)
        feeds = arrays if self.training_flag is None else [*arrays, False]
        try:
            values = self._run(*feeds)
        except tf.errors.InvalidArgumentError as error:
            shapes = ", ".join(f"{t.name} {tuple(a.shape)}" for t, a in zip(self.inputs, arrays))
            what = f"of shape {arrays[0].shape}" if len(arrays) == 1 else f"({shapes})"
            raise DataError(f"the model rejected a calibration batch {what}: {first_line(error)}") from None
        result, k = {}, 0
        for name, fused in zip(self._names, self._fused):
            moments = []
            for is_fused in fused:
                count, mean, third = values[k : k + 3]
                k += 3
                if is_fused:  # count = size of x, third = Bessel-corrected variance (n = 1: 0): M2 = var * (n - 1)
                    count = int(count) // mean.size
                    third = third.astype(np.float64) * (count - 1)
                moments.append(BatchMoments(int(count), mean, third))
            result[name] = moments
        return result

    def outputs(self, batch, tensor_name: str) -> np.ndarray:
        """The value of ``tensor_name`` for one batch, with the selected BN layers on batch statistics."""
        import tensorflow as tf

        try:
            return self.session.run(self.graph.get_tensor_by_name(tensor_name), self.feed(batch))
        except tf.errors.InvalidArgumentError as error:
            raise DataError(f"cannot compute the output {tensor_name} for the agreement check: {first_line(error)}") from None
