"""The model in inference mode (BN on its moving statistics), with statistics that can be swapped in the session.

Used to measure what a repair changes at the model's output: run the calibration batches with the stored
statistics, load the recomputed ones into the session's variables, run them again. With a training flag the
graph's own inference path is used (flag fed False). When training mode is baked in, the selected layers are
switched to their moving statistics: fused nodes get ``is_training=False`` (a node that slim's own fused path
feeds empty constants is given reads of the moving variables first); non-fused arithmetic is rewired to read
the moving variables. Such a node inside a control-flow function is not rewired: :class:`NoInferenceMode`.
"""

from __future__ import annotations

import copy

import numpy as np

from ckptfix.graph.batchnorm import BatchNormLayer
from ckptfix.graph.feeds import Feeds
from ckptfix.graph.session import SessionModel, clear_devices, editable_nodes, import_graph, restore


class NoInferenceMode(Exception):
    """The graph has no inference mode for some selected layer (internal; callers report it as a notice)."""


def _inference_graph_def(meta_graph, layers: list[BatchNormLayer], baked_in_training: bool):
    graph_def = copy.deepcopy(meta_graph.graph_def)
    clear_devices(graph_def)
    if not baked_in_training:
        return graph_def
    scopes = editable_nodes(graph_def)
    for layer in layers:
        for fused in layer.fused_nodes:
            if not fused.is_training:
                continue
            if not fused.reads_statistics:
                if fused.function is not None:
                    raise NoInferenceMode(f"BN layer {layer.name} has no inference-mode node")
                node = scopes[None][fused.node]
                node.input[3] = _add_read(graph_def, scopes[None][layer.mean_variable])
                node.input[4] = _add_read(graph_def, scopes[None][layer.variance_variable])
            scopes[fused.function][fused.node].attr["is_training"].b = False
    return graph_def


def _add_read(graph_def, variable) -> str:
    """Add a node reading ``variable`` (ReadVariableOp for resource variables, Identity for TF1 ones)."""
    read = graph_def.node.add()
    read.name = f"ckptfix_inference/read/{variable.name}"
    read.input.append(variable.name)
    if variable.op == "VarHandleOp":
        read.op = "ReadVariableOp"
        read.attr["dtype"].type = variable.attr["dtype"].type
    else:
        read.op = "Identity"
        read.attr["T"].type = variable.attr["dtype"].type
    return read.name


class InferenceModel(SessionModel):
    """Inference-mode graph restored from a checkpoint; :meth:`outputs` runs a batch, :meth:`load_statistics`
    replaces the selected layers' moving statistics in the session (never on disk)."""

    def __init__(self, meta_graph, layers: list[BatchNormLayer], feeds: Feeds, prefix: str, output: str) -> None:
        import tensorflow as tf

        baked_in = feeds.training_flag is None
        self.graph = import_graph(_inference_graph_def(meta_graph, layers, baked_in))
        self._variables: dict[str, tuple] = {}
        with self.graph.as_default(), tf.compat.v1.name_scope("ckptfix_inference"):
            reads = {}
            for layer in layers:
                for variable in (layer.mean_variable, layer.variance_variable):
                    reads[variable] = self._add_assign(variable)
            if baked_in:
                for layer in layers:
                    for site in layer.nonfused_sites:
                        for (node, position), variable in (
                            (site.mean_use, layer.mean_variable),
                            (site.variance_use, layer.variance_variable),
                        ):
                            used = self.graph.get_operation_by_name(node).inputs[position]
                            value = tf.reshape(tf.cast(reads[variable], used.dtype), tf.shape(used))
                            self.graph.get_operation_by_name(node)._update_input(position, value)
            self.session = tf.compat.v1.Session(graph=self.graph)
        self.inputs = [self.graph.get_tensor_by_name(name) for name in feeds.inputs]
        self.training_flag = None if baked_in else self.graph.get_tensor_by_name(feeds.training_flag)
        self.output = self.graph.get_tensor_by_name(output)
        restore(self.session, meta_graph.saver_def, prefix)

    def _add_assign(self, variable: str):
        """Create a placeholder + assign op for one variable; return a tensor reading its value."""
        import tensorflow as tf

        op = self.graph.get_operation_by_name(variable)
        dtype = tf.as_dtype(op.get_attr("dtype"))
        value = tf.compat.v1.placeholder(dtype)
        if op.type == "VarHandleOp":
            handle = op.outputs[0]
            assign = tf.raw_ops.AssignVariableOp(resource=handle, value=value)
            read = tf.raw_ops.ReadVariableOp(resource=handle, dtype=dtype)
        else:
            assign = tf.compat.v1.assign(op.outputs[0], value, validate_shape=False).op
            read = tf.identity(op.outputs[0])
        self._variables[variable] = (value, assign, dtype)
        return read

    def load_statistics(self, values: dict[str, np.ndarray]) -> None:
        """Assign new values (variable op name -> array) to the moving statistics, in one session run."""
        assigns, feed = [], {}
        for variable, array in values.items():
            placeholder, assign, dtype = self._variables[variable]
            shape = self.graph.get_operation_by_name(variable).get_attr("shape")
            feed[placeholder] = np.asarray(array).astype(dtype.as_numpy_dtype).reshape([d.size for d in shape.dim])
            assigns.append(assign)
        self.session.run(assigns, feed)

    def outputs(self, batch) -> np.ndarray:
        return self.session.run(self.output, self.feed(batch))
