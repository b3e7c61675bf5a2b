"""The measuring pass on a Keras model: BN layers on batch statistics, every other layer in inference mode.

The model is called with ``training=False`` (dropout off, every other layer in inference mode) while each
BN layer's ``call`` is replaced, on the instance and only for the pass, by one that normalises with its
input's batch moments -- what ``training=True`` computes -- without updating any variable. (Calling the
model with ``training=True`` would move the moving statistics, and a Keras 3 BN layer with
``trainable=False`` stays in inference mode even then.) Per channel the replacement computes, inside the
``tf.function``::

    mean, variance = tf.nn.moments(x)     (float32, what Keras's training mode normalises with)
    y = gamma * (x - mean) / sqrt(variance + epsilon) + beta     (gamma = 1, beta = 0 when absent)

and records the accurate shifted sums of ``x`` around that mean (:mod:`ckptfix.graph.sums`, the same sums as
for TF1 graphs); only the per-channel vectors reach the host, where they become count / mean / M2 in float64
and are merged by :class:`ckptfix.stats.PooledMoments` exactly as for TF1 graphs. A layer called several times (shared
weights) contributes every call.

Ghost BN (tf_keras ``virtual_batch_size=V``) is measured as its training mode normalises: ``x`` reshaped to
``[V, -1, ...]`` (group g: samples g, g + G, ... of a batch of G * V), moments per group and channel, each group
normalised by its own; the host splits them into one entry per group (:func:`ckptfix.graph.sums.per_group`, as
for TF1 graphs), whose mean the pipeline writes.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import numpy as np

from ckptfix.errors import GraphError
from ckptfix.graph.sums import SharedConstants, batch_moments, per_group, shifted_sums
from ckptfix.keras.batchnorm import KerasBatchNorm
from ckptfix.stats.pooled import BatchMoments

_MISSING = object()
#: held while a forward is traced with the call swap in place: the swap is on the shared layer objects, so
#: two sessions (one per device, :mod:`ckptfix.scaling`) must not trace at once
_TRACING = threading.Lock()


def _ghost_groups(bn: KerasBatchNorm, x):
    """``x`` as tf_keras' ghost BN reshapes it in training: ``[V, -1, ...]``, so that group g holds samples g, g + G,
    g + 2G, ... of a batch of ``G * V`` (the pipeline refuses batches of other sizes before they run)."""
    import tensorflow as tf

    virtual, rows = bn.virtual_batch_size, x.shape[0]
    grouped = tf.reshape(x, tf.concat([[virtual, -1], tf.shape(x)[1:]], 0))
    grouped.set_shape([virtual, None if rows is None else rows // virtual, *x.shape[1:]])
    return grouped


def _batch_statistics_call(bn: KerasBatchNorm, recorded: dict[str, list], constants: SharedConstants):
    import tensorflow as tf

    layer = bn.layer

    def call(inputs, training=None, mask=None, **kwargs):
        if mask is not None:
            raise GraphError(f"BN layer {bn.name} receives a mask: masked batch statistics are not supported.")
        x = tf.cast(tf.convert_to_tensor(inputs), tf.float32)
        if x.shape.rank is None:
            raise GraphError(f"BN layer {bn.name} has an input of unknown rank: build the model with a known input rank.")
        normalised = x if bn.virtual_batch_size is None else _ghost_groups(bn, x)
        rank = normalised.shape.rank
        channel_axes = sorted({axis % rank for axis in bn.channel_axes})
        kept = ([1] if bn.virtual_batch_size else []) + channel_axes  # ghost BN: one statistic per group and channel
        mean, variance = tf.nn.moments(normalised, axes=[a for a in range(rank) if a not in kept], keepdims=True)
        recorded.setdefault(bn.name, []).append(shifted_sums(normalised, kept, constants, shift=mean))
        shape = [normalised.shape[a] if a in channel_axes else 1 for a in range(rank)]
        gamma = None if getattr(layer, "gamma", None) is None else tf.reshape(tf.cast(layer.gamma, tf.float32), shape)
        beta = None if getattr(layer, "beta", None) is None else tf.reshape(tf.cast(layer.beta, tf.float32), shape)
        outputs = tf.nn.batch_normalization(normalised, mean, variance, beta, gamma, layer.epsilon)
        if bn.virtual_batch_size:
            outputs = tf.reshape(outputs, tf.shape(x))
        return tf.cast(outputs, layer.compute_dtype)

    return call


@contextlib.contextmanager
def batch_statistics(layers: list[KerasBatchNorm], recorded: dict[str, list]) -> Iterator[None]:
    """Within the block, each layer's ``call`` normalises with batch moments and records them; restored after."""
    saved = [(bn.layer, bn.layer.__dict__.get("call", _MISSING)) for bn in layers]
    constants = SharedConstants()
    try:
        for bn in layers:
            object.__setattr__(bn.layer, "call", _batch_statistics_call(bn, recorded, constants))
        yield
    finally:
        for layer, original in saved:
            if original is _MISSING:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", original)


def _device_scope() -> str:
    """The device of the enclosing ``tf.device`` scope ("" when none), part of what ``tf.function`` traces for."""
    from tensorflow.python.eager import context

    return context.context().device_name or ""


def named_outputs(model, outputs, chosen: str | None = None):
    """The model's output tensor, or ``{name: tensor}`` for a model with several outputs (named as the model
    names them: its ``output_names``, a dict's keys); ``chosen``: only that output."""
    import tensorflow as tf

    if isinstance(outputs, dict):
        named = dict(outputs)
    else:
        flat = tf.nest.flatten(outputs)
        names = list(getattr(model, "output_names", None) or [])
        names = names if len(names) == len(flat) and len(set(names)) == len(names) else [f"output_{k}" for k in range(len(flat))]
        named = dict(zip(names, flat))
    if chosen is not None:
        return named[chosen]
    return next(iter(named.values())) if len(named) == 1 else named


def output_names(model, chosen: str | None = None) -> list[str]:
    """The names :func:`named_outputs` gives the outputs of ``model`` (built), without running it."""
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return ["output"]
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(outputs) or len(set(names)) != len(names):
        names = [f"output_{k}" for k in range(len(outputs))]
    if chosen is not None and chosen not in names:
        raise GraphError(f"--output-tensor {chosen}: the model's outputs are {', '.join(names)}: pass one of them.")
    return [chosen] if chosen is not None else names


class BatchStatisticsForward:
    """``run(batch)`` -> ``{layer name: [BatchMoments, ...]}`` and the model's output(s), in one call.

    Only the per-channel vectors are copied to the host for every batch; the output stays on the device
    unless the caller keeps it (the agreement check's first batches)."""

    def __init__(self, model, layers: list[KerasBatchNorm], output: str | None = None) -> None:
        import tensorflow as tf

        self._model, self._layers, self._recorded = model, layers, {}
        self._names = [bn.name for bn in layers]

        def forward(x):
            self._recorded.clear()
            outputs = named_outputs(model, model(x, training=False), output)
            moments = {name: self._recorded.get(name, []) for name in self._names}
            return outputs, moments

        self._forward = tf.function(forward, reduce_retracing=True)
        self._traced: set = set()

    def run(self, batch) -> tuple[dict[str, list[BatchMoments]], object]:
        """Per-layer moments (host) and the output tensor(s) (left on the device; ``.numpy()`` if needed).

        ``batch``: an array, or a list of arrays in the model's input order. The call swap is needed only
        while ``tf.function`` traces (a new input signature or device); calls it has traced run without it,
        so sessions on several devices run at once.
        """
        arrays = batch if isinstance(batch, (list, tuple)) else [batch]
        signature = (_device_scope(), *((tuple(np.shape(a)), str(getattr(a, "dtype", ""))) for a in arrays))
        if signature in self._traced:
            outputs, moments = self._forward(batch)
        else:
            with _TRACING, batch_statistics(self._layers, self._recorded):
                outputs, moments = self._forward(batch)
            self._traced.add(signature)
        unused = [name for name in self._names if not moments[name]]
        if unused:
            raise GraphError(f"BN layer {unused[0]} is not called by the model's forward pass: nothing to measure it on.")
        per_layer = {
            bn.name: [group for sums in moments[bn.name]
                      for group in per_group(batch_moments(*(value.numpy() for value in sums)),
                                             bn.channels if bn.virtual_batch_size else None)]
            for bn in self._layers
        }
        return per_layer, outputs


def host(outputs):
    """Output tensor(s) as numpy: an array, or a dict of them."""
    return {name: value.numpy() for name, value in outputs.items()} if isinstance(outputs, dict) else outputs.numpy()


class InferenceForward:
    """The model's output(s) in inference mode; :meth:`using` swaps in other moving statistics."""

    def __init__(self, model, output: str | None = None) -> None:
        import tensorflow as tf

        self._forward = tf.function(lambda x: named_outputs(model, model(x, training=False), output), reduce_retracing=True)

    def outputs(self, batch):
        """An array, or ``{name: array}`` for several outputs."""
        return host(self._forward(batch))

    @staticmethod
    @contextlib.contextmanager
    def using(values: dict[int, tuple[object, np.ndarray]]) -> Iterator[None]:
        """Assign ``{id: (variable, value)}`` for the block; the previous values are restored after."""
        saved = [(variable, np.array(variable.numpy())) for variable, _ in values.values()]
        try:
            for variable, value in values.values():
                variable.assign(np.asarray(value).astype(variable.numpy().dtype).reshape(variable.shape))
            yield
        finally:
            for variable, value in saved:
                variable.assign(value)
