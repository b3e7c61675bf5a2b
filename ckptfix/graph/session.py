"""Importing a (rewritten) GraphDef into a fresh graph and restoring a checkpoint into its session."""

from __future__ import annotations

from ckptfix.errors import GraphError, error_reason


def first_line(error: Exception) -> str:
    """The reason a TensorFlow error gives (:func:`~ckptfix.errors.error_reason`: for a session's "Graph execution
    error:", the runtime's message below its stack of node definitions)."""
    return error_reason(error)


def clear_devices(graph_def) -> None:
    """Drop device pins (top level and function bodies) so TensorFlow places ops on what this machine has."""
    for node in graph_def.node:
        node.device = ""
    for function in graph_def.library.function:
        for node in function.node_def:
            node.device = ""


def editable_nodes(graph_def) -> dict:
    """``{scope: {node name: NodeDef}}`` to edit ``graph_def`` in place; scope None is the top-level graph,
    otherwise a function's name (the ``function`` of a fused BN node found inside an ``If`` branch)."""
    scopes = {None: {node.name: node for node in graph_def.node}}
    for function in graph_def.library.function:
        scopes[function.signature.name] = {node.name: node for node in function.node_def}
    return scopes


def import_graph(graph_def, device: str | None = None):
    """A new ``tf.Graph`` holding ``graph_def`` (names unchanged); its ops placed on ``device`` when given."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.device(device):
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as error:
            raise GraphError(f"cannot import the .meta graph: {first_line(error)}") from None
    return graph


def measuring_config():
    """The session config of a measuring graph: the process's own (what ``tf.compat.v1.Session`` takes by default:
    logical devices, thread pools, soft placement) with Grappler's optimisers run once over the graph, not twice,
    and without the memory optimiser (its rewrites serve training: recomputing or swapping activations kept for
    gradients, and the graph has none). Both change only the first ``session.run`` of each fetch list, whose
    graph optimisation is a fixed cost of every run (docs/performance.md); the optimised graph runs as fast."""
    import tensorflow as tf
    from tensorflow.core.protobuf import rewriter_config_pb2
    from tensorflow.python.eager import context

    config = tf.compat.v1.ConfigProto()
    config.CopyFrom(context.context().config)
    rewrite = config.graph_options.rewrite_options
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    rewrite.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
    return config


def restore(session, saver_def, prefix: str) -> None:
    """Run the graph's own saver restore op on ``prefix``; errors name the likely fix."""
    import tensorflow as tf

    if not saver_def.restore_op_name:
        raise GraphError("the .meta graph has no saver to restore the checkpoint with: save it with tf.compat.v1.train.Saver.")
    try:
        session.run(saver_def.restore_op_name, {saver_def.filename_tensor_name: prefix})
    except tf.errors.DataLossError as error:
        from ckptfix.io.checkpoint_reader import damaged_error

        raise damaged_error(error, prefix) from None
    except tf.errors.OpError as error:
        raise GraphError(
            f"the checkpoint does not match the .meta graph ({first_line(error)}); pass --meta with the graph it was saved from."
        ) from None


class SessionModel:
    """A graph in its own session, fed calibration batches with the training flag (if any) fed False.

    A batch is an array for a one-input model, else a dict mapping each input's tensor name to an array.
    Subclasses set ``graph``, ``session``, ``inputs`` (the fed tensors) and ``training_flag``. Use as a
    context manager (the session is closed on exit).
    """

    graph: object
    session: object
    inputs: list
    training_flag: object | None

    @property
    def input(self):
        """The first (for most models the only) input tensor."""
        return self.inputs[0]

    def input_values(self, batch) -> list:
        """One array per input tensor, in the order of ``inputs``."""
        if isinstance(batch, dict):
            return [batch[tensor.name] for tensor in self.inputs]
        if len(self.inputs) != 1:
            raise TypeError(f"a model with {len(self.inputs)} inputs takes dict batches keyed by tensor name")
        return [batch]

    def feed(self, batch) -> dict:
        """The feed dict for one batch."""
        feed = dict(zip(self.inputs, self.input_values(batch)))
        if self.training_flag is not None:
            feed[self.training_flag] = False
        return feed

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
