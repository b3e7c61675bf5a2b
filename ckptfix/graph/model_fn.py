"""Build the graph of a checkpoint saved without a ``.meta`` from the user's model function (``--model``).

The function is called the way slim's ``nets_factory`` calls its networks, inside a fresh ``tf.Graph``::

    with slim.arg_scope(arg_scope()):          # only with --arg-scope
        function(images, num_classes=N, is_training=False, **model_args)

``images`` is a float32 placeholder named ``input`` of shape ``(None, H, W, C)``: ``--input-shape HxWxC``, or
the function's ``default_image_size`` attribute (slim sets it on every net: 224 for ResNet, 299 for Inception
v3) with 3 channels. ``num_classes`` is passed only when given, ``is_training`` only when the function takes
it. ``model_args`` (``--model-arg key=value``, repeated) are parsed as Python literals (``0.5``, ``True``,
``(1, 2)``, ``'a'``); a value that is not a literal is passed as a string. What the function returns is not
used: ckptfix finds the BN layers, the input and the logits in the graph it built. tf-slim networks work
under TensorFlow 2.21 as they are (:func:`ckptfix.compat.enable_tf_slim` adds the names slim still uses).

The graph gets a saver over its global variables and is exported to an in-memory MetaGraphDef; the rest of
the pipeline restores the checkpoint into it exactly as into a ``.meta`` graph. Every variable must be in the
checkpoint with the same shape (extra checkpoint tensors, such as optimizer slots, are fine).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Callable, Mapping

from ckptfix.errors import CheckpointError, CkptfixError, GraphError
from ckptfix.io.checkpoint_reader import open_reader
from ckptfix.user_code import describe, resolve_function, running_user_code

INPUT_NAME = "input"


def parse_model_args(pairs: list[str] | None) -> dict:
    """``["depth=0.5", "scope='net'"]`` -> ``{"depth": 0.5, "scope": "net"}`` (Python literals, else strings)."""
    parsed = {}
    for pair in pairs or []:
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or not key.isidentifier():
            raise CkptfixError(f"--model-arg {pair!r}: expected key=value (e.g. --model-arg dropout_keep_prob=0.8).")
        try:
            parsed[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            parsed[key] = text.strip()
    return parsed


def parse_input_shape(shape: str | tuple | list | None, function: Callable) -> tuple[int, ...]:
    """The per-sample input shape: ``"HxWxC"`` (or ``"224,224,3"``, a tuple), else ``default_image_size``."""
    if shape is None:
        size = getattr(function, "default_image_size", None)
        if not isinstance(size, int):
            raise CkptfixError("--model: pass --input-shape HxWxC (the function has no default_image_size).")
        return (size, size, 3)
    if isinstance(shape, str):
        parts = shape.lower().replace(",", "x").split("x")
    else:
        parts = list(shape)
    try:
        dims = tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        raise CkptfixError(f"--input-shape {shape!r}: expected sizes like 224x224x3.") from None
    if not dims or any(d < 1 for d in dims):
        raise CkptfixError(f"--input-shape {shape!r}: expected positive sizes like 224x224x3.")
    return dims


def _takes(function: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _check_variables(variables, prefix: Path, label: str) -> None:
    """Every graph variable is in the checkpoint with the same shape; else CheckpointError naming the fix."""
    import tensorflow as tf

    try:
        shapes = open_reader(prefix).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {prefix}: {str(error).strip().splitlines()[0]}") from None
    missing, mismatched = [], []
    for variable in variables:
        name = variable.op.name
        if name not in shapes:
            missing.append(name)
        elif list(shapes[name]) != variable.shape.as_list():
            mismatched.append(f"{name} {variable.shape.as_list()} vs {list(shapes[name])} in the checkpoint")
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(
            f"the checkpoint has no {', '.join(missing[:3])}{more} that {label} builds: the checkpoint is incomplete, or "
            "check the function, its scope and --model-arg options (it must be the one the checkpoint was trained with)."
        )
    if mismatched:
        raise CheckpointError(
            f"{label} builds {mismatched[0]}: pass the --num-classes / --model-arg / --input-shape it was trained with."
        )


def build_meta_graph(
    function: Callable,
    prefix: Path,
    *,
    input_shape=None,
    num_classes: int | None = None,
    model_args: Mapping | None = None,
    arg_scope: str | Callable | None = None,
    label: str = "--model",
):
    """Call ``function`` in a fresh graph (see the module docstring) and export it as a MetaGraphDef."""
    import contextlib

    import tensorflow as tf

    from ckptfix.compat import enable_tf_slim

    enable_tf_slim()
    shape = parse_input_shape(input_shape, function)
    kwargs = dict(model_args or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if _takes(function, "is_training"):
        kwargs.setdefault("is_training", False)
    scope = resolve_function(arg_scope, "--arg-scope") if arg_scope is not None else None
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, (None, *shape), name=INPUT_NAME)
        context = contextlib.nullcontext()
        if scope is not None:
            import tf_slim

            with running_user_code(describe("--arg-scope", arg_scope), scope):
                context = tf_slim.arg_scope(scope())
        try:
            with running_user_code(label, function), context:
                function(images, **kwargs)
        except CkptfixError:
            raise
        except Exception as error:  # not from their code's own lines: the call itself (its arguments)
            raise GraphError(f"{label} raised {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}") from error
        variables = tf.compat.v1.global_variables()
        if not variables:
            raise GraphError(f"{label} created no variables: is it the function that builds the model?")
        _check_variables(variables, prefix, label)
        saver = tf.compat.v1.train.Saver(variables)
        return tf.compat.v1.train.export_meta_graph(graph=graph, saver_def=saver.as_saver_def())
