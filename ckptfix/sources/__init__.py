"""Model sources: what CKPT names, opened once (see :mod:`ckptfix.sources.base` for the interface).

* :mod:`~ckptfix.sources.graph` -- TF1 graphs: checkpoint + ``.meta``, checkpoint + ``--model`` function,
  frozen ``.pb`` / ``.pbtxt``
* :mod:`~ckptfix.sources.keras` -- Keras / TF2 files: ``.keras``, ``.h5``, ``.weights.h5``, TF2 checkpoints,
  SavedModels that keep a Keras model (``keras_metadata.pb``)
* :mod:`~ckptfix.sources.saved_model` -- any other TF2 SavedModel, repaired at graph level

:func:`open_source` picks one: a SavedModel at graph level (no ``keras_metadata.pb``, or ``--signature``
given; not with ``--model-format savedmodel``, ``--model`` or ``--architecture``), else a Keras / TF2 format
(``--model-format``, else detected from the path), then a frozen graph, a ``--model`` function, or the
checkpoint's ``.meta`` (docs/which-file.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from ckptfix.errors import CheckpointError, CkptfixError
from ckptfix.sources.base import Layer, Session, Source

__all__ = ["Layer", "Session", "Source", "open_source"]


def _keras_format(checkpoint, options) -> str | None:
    """The Keras / TF2 format of CKPT (docs/keras.md), or None for a TF1 graph."""
    from ckptfix.keras.formats import detect_model_format

    given = getattr(options.model_format, "value", options.model_format)
    chosen = detect_model_format(checkpoint, options.meta) if given is None else given
    if chosen in (None, "tf1"):
        return None
    tf1_only = options.tf1_only()
    if tf1_only:
        raise CkptfixError(f"{tf1_only[0]} applies to TF1 graphs only; a {chosen} model is called with training=False.")
    return chosen


def _graph_level_saved_model(checkpoint, options) -> bool:
    """Whether CKPT is a SavedModel to repair at graph level (module docstring); ``--signature`` needs one."""
    from ckptfix.graph.saved_model import is_saved_model

    given = getattr(options.model_format, "value", options.model_format)
    saved_model = options.meta is None and is_saved_model(checkpoint)
    if options.signature is not None and not (saved_model and given in (None, "savedmodel")):
        raise CkptfixError(f"--signature applies to SavedModel folders; {checkpoint} is not one.")
    if not saved_model or given not in (None, "savedmodel"):
        return False
    if options.signature is not None:
        return True
    if given == "savedmodel" or options.model is not None or options.architecture is not None:
        return False
    from ckptfix import compat

    # a SavedModel keeping a Keras model loads with Keras 2; without it (no tf_keras) it is repaired at graph level
    return not ((Path(checkpoint).expanduser() / "keras_metadata.pb").is_file() and compat.keras2_name() is not None)


def _model_label(model) -> str:
    return f"--model {model}" if isinstance(model, str) else f"model {getattr(model, '__qualname__', model)}"


@contextlib.contextmanager
def open_source(checkpoint, options) -> Iterator[Source]:
    """The model source CKPT names, with ``options``' model options (``meta``, ``model``, ``model_format``...)."""
    from ckptfix.data.sources import calibration_files_in
    from ckptfix.graph.frozen import is_frozen_graph, thaw

    data = calibration_files_in(checkpoint) if isinstance(checkpoint, (str, Path)) else None
    if data is not None:
        raise CheckpointError(f"{checkpoint} holds calibration data ({data}), not a model: the arguments look swapped; "
                              "pass the checkpoint first, then the calibration data.")

    graph_level = _graph_level_saved_model(checkpoint, options)
    keras_format = None if graph_level else _keras_format(checkpoint, options)
    if keras_format is None and options.custom_objects:
        raise CkptfixError(f"--import applies to Keras files with custom layers; {checkpoint} is "
                           "repaired at graph level, where no Keras class is loaded: leave it out.")
    if graph_level:
        from ckptfix.sources.saved_model import SavedModelSource

        yield SavedModelSource(checkpoint, options.signature)
        return
    if keras_format is not None:
        from ckptfix.sources.keras import KerasModelSource

        yield KerasModelSource(checkpoint, keras_format, options)
        return

    from ckptfix.graph.meta import load_meta_graph
    from ckptfix.graph.model_fn import build_meta_graph
    from ckptfix.io.locate import locate_checkpoint
    from ckptfix.sources.graph import FrozenGraphSource, GraphSource
    from ckptfix.user_code import resolve_function

    model = options.model
    if is_frozen_graph(checkpoint):
        if options.meta is not None or model is not None:
            raise CkptfixError(f"{checkpoint} is a frozen graph: --meta and --model apply to checkpoints only.")
        with thaw(checkpoint) as frozen:
            yield FrozenGraphSource(frozen)
    elif model is not None:
        if options.meta is not None:
            raise CkptfixError("pass either --meta (the saved graph) or --model (the function that builds it), not both.")
        files = locate_checkpoint(checkpoint, need_meta=False)
        meta_graph = build_meta_graph(
            resolve_function(model), files.prefix, label=_model_label(model), model_args=options.model_args,
            input_shape=options.input_shape, arg_scope=options.arg_scope,
        )
        yield GraphSource(files, meta_graph, label=str(files.prefix), graph_label=f"built by {_model_label(model)}")
    else:
        files = locate_checkpoint(checkpoint, options.meta)
        yield GraphSource(files, load_meta_graph(files.meta), label=str(files.prefix), graph_label=str(files.meta),
                          training_graph=True)
