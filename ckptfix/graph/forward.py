"""The frozen model, rewritten so that the selected BN layers normalise with batch statistics, in a session.

The rewrite happens on a copy of the GraphDef before import (the caller's MetaGraphDef is never changed):

* fused BN nodes saved in inference mode (``is_training=False``: the inference branch of a ``tf.cond``, or a
  graph exported for evaluation) get ``is_training=True`` and ``exponential_avg_factor=1``, so they
  normalise with the batch's statistics;
* non-fused BN arithmetic is rewired to read batch moments computed here instead of the moving ones;
* devices are cleared, so TensorFlow places the graph on whatever the machine has (a GPU when there is one).

The training flag, when there is one, is fed False, so every other layer (dropout) keeps inference behaviour.

Per batch, for every BN input ``x`` of a selected layer, three per-channel values are computed inside the
graph -- ``count``, ``mean`` and ``M2 = sum((x - mean)**2)`` over all axes but the channel axis, in float32 --
and only these vectors are fetched, in one ``session.run``. Update ops are never fetched, so nothing in the
session's variables changes what is written (the new values come from the pooled moments).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np

from ckptfix.errors import CheckpointError, DataError, GraphError
from ckptfix.graph.batchnorm import BatchNormLayer
from ckptfix.graph.feeds import Feeds
from ckptfix.stats import BatchMoments


class _Moments(NamedTuple):
    """Graph tensors (or their fetched values) of one BN input's batch moments."""

    count: object
    mean: object
    m2: object


def _rewrite_graph_def(meta_graph, layers: list[BatchNormLayer]):
    """A copy of the graph with devices cleared and the layers' inference-mode fused nodes switched."""
    graph_def = copy.deepcopy(meta_graph.graph_def)
    scopes = {None: {node.name: node for node in graph_def.node}}
    for function in graph_def.library.function:
        scopes[function.signature.name] = {node.name: node for node in function.node_def}
    for nodes in scopes.values():
        for node in nodes.values():
            node.device = ""
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


class ForwardModel:
    """The rewritten graph restored from a checkpoint; :meth:`run` returns each layer's batch moments.

    Use as a context manager (the session is closed on exit).
    """

    def __init__(self, meta_graph, layers: list[BatchNormLayer], feeds: Feeds, checkpoint_prefix: str) -> None:
        import tensorflow as tf

        self.layers = layers
        self.graph = tf.Graph()
        with self.graph.as_default():
            try:
                tf.compat.v1.import_graph_def(_rewrite_graph_def(meta_graph, layers), name="")
            except (ValueError, tf.errors.OpError) as error:
                raise GraphError(f"cannot import the .meta graph: {_first_line(error)}") from None
            self.input = self.graph.get_tensor_by_name(feeds.input)
            self.training_flag = None if feeds.training_flag is None else self.graph.get_tensor_by_name(feeds.training_flag)
            with tf.compat.v1.name_scope("ckptfix"):
                self._fetches = {layer.name: self._layer_moments(layer) for layer in layers}
            self.session = tf.compat.v1.Session(graph=self.graph)
        self._restore(meta_graph.saver_def, checkpoint_prefix)

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
                by_input[tensor] = _moments(self.graph.get_tensor_by_name(tensor.name), layer.channels_last)
        return [
            _Moments(m.count, tf.reshape(m.mean, [-1]), tf.reshape(m.m2, [-1])) for m in by_input.values()
        ]

    def _restore(self, saver_def, prefix: str) -> None:
        import tensorflow as tf

        if not saver_def.restore_op_name:
            raise GraphError("the .meta graph has no saver to restore the checkpoint with: save it with tf.compat.v1.train.Saver.")
        try:
            self.session.run(saver_def.restore_op_name, {saver_def.filename_tensor_name: prefix})
        except tf.errors.DataLossError as error:
            raise CheckpointError(
                f"checkpoint {prefix} is damaged ({_first_line(error)}): restore it from a good copy."
            ) from None
        except tf.errors.OpError as error:
            raise GraphError(
                f"the checkpoint does not match the .meta graph ({_first_line(error)}); pass --meta with the graph it was saved from."
            ) from None

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        return None if self.input.shape.rank is None else tuple(self.input.shape.as_list())

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input.dtype.as_numpy_dtype)

    def run(self, batch: np.ndarray) -> dict[str, list[BatchMoments]]:
        """Forward one batch; per layer, the moments of each of its BN inputs."""
        import tensorflow as tf

        feed = {self.input: batch}
        if self.training_flag is not None:
            feed[self.training_flag] = False
        try:
            values = self.session.run(self._fetches, feed)
        except tf.errors.InvalidArgumentError as error:
            raise DataError(f"the model rejected a calibration batch of shape {batch.shape}: {_first_line(error)}") from None
        return {
            name: [BatchMoments(int(m.count), m.mean, m.m2) for m in moments]
            for name, moments in values.items()
        }

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ForwardModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
