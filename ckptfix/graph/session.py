"""Importing a (rewritten) GraphDef into a fresh graph and restoring a checkpoint into its session."""

from __future__ import annotations

from ckptfix.errors import CheckpointError, GraphError


def first_line(error: Exception) -> str:
    """The first line of a TensorFlow error message (the rest is a stack of op names)."""
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def clear_devices(graph_def) -> None:
    """Drop device pins (top level and function bodies) so TensorFlow places ops on what this machine has."""
    for node in graph_def.node:
        node.device = ""
    for function in graph_def.library.function:
        for node in function.node_def:
            node.device = ""


def import_graph(graph_def):
    """A new ``tf.Graph`` holding ``graph_def`` (names unchanged)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as error:
            raise GraphError(f"cannot import the .meta graph: {first_line(error)}") from None
    return graph


def restore(session, saver_def, prefix: str) -> None:
    """Run the graph's own saver restore op on ``prefix``; errors name the likely fix."""
    import tensorflow as tf

    if not saver_def.restore_op_name:
        raise GraphError("the .meta graph has no saver to restore the checkpoint with: save it with tf.compat.v1.train.Saver.")
    try:
        session.run(saver_def.restore_op_name, {saver_def.filename_tensor_name: prefix})
    except tf.errors.DataLossError as error:
        raise CheckpointError(f"checkpoint {prefix} is damaged ({first_line(error)}): restore it from a good copy.") from None
    except tf.errors.OpError as error:
        raise GraphError(
            f"the checkpoint does not match the .meta graph ({first_line(error)}); pass --meta with the graph it was saved from."
        ) from None


class SessionModel:
    """A graph in its own session, fed calibration batches with the training flag (if any) fed False.

    Subclasses set ``graph``, ``session``, ``input`` and ``training_flag``. Use as a context manager (the
    session is closed on exit).
    """

    graph: object
    session: object
    input: object
    training_flag: object | None

    def feed(self, batch) -> dict:
        """The feed dict for one batch."""
        feed = {self.input: batch}
        if self.training_flag is not None:
            feed[self.training_flag] = False
        return feed

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
