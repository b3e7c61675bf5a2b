"""Keras / TF2 files as a model source: ``.keras``, ``.h5``, ``.weights.h5``, TF2 object-based checkpoints and
Keras SavedModels (docs/keras.md).

The model is loaded once (:mod:`ckptfix.keras.formats`); its BN layers measure batch statistics through a
per-instance call swap under ``training=False`` (:mod:`ckptfix.keras.measure`); the agreement check assigns
the new statistics to the loaded variables for its second run and puts the stored ones back when the session
closes. The output is the same format with only the statistics replaced (:mod:`ckptfix.keras.storage`),
loaded back with the format's ordinary call before it is moved into place.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from ckptfix.data.spec import InputSpec, positional_aliases
from ckptfix.errors import CkptfixError, NoBatchNormError, OutputError
from ckptfix.keras.batchnorm import find_batchnorm_layers
from ckptfix.keras.conventions import model_convention
from ckptfix.keras.formats import (KERAS2_LOAD, KERAS3_LOAD, KerasSource, load_model_file, load_source,
                                   restore_object_checkpoint)
from ckptfix.keras.measure import BatchStatisticsForward, InferenceForward, host, output_names
from ckptfix.keras.storage import (StoredValues, check_keys, check_output, default_output, is_file_format, variable_keys,
                                   write_output, written_path)
from ckptfix.sources.base import Layer, Notice, without_renorm


def _input_specs(model, names: tuple[str, ...] | None) -> list[InputSpec]:
    """One :class:`InputSpec` per model input, named as the Keras inputs (the keys of ``.npz`` data / dicts),
    or as ``--input`` names them (one name per input, in the model's input order)."""
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:  # a subclassed model: the shape comes from the data
        if names is not None and len(names) > 1:
            raise CkptfixError(f"--input names {len(names)} inputs, but the model takes one: pass one name or none.")
        return [InputSpec(names[0] if names else "input", None, np.dtype(np.float32))]
    if names is not None and len(names) != len(inputs):
        raise CkptfixError(
            f"--input names {len(names)} input(s), but the model has {len(inputs)}: "
            + ("pass one name per input, in the model's order." if len(inputs) > 1 else "pass one name or none.")
        )
    def aliases(tensor, k: int) -> tuple[str, ...]:
        own = sorted({input_layer_name(tensor, k), str(getattr(tensor, "name", None) or "")} - {""})
        return tuple(own) + (positional_aliases(k) if len(inputs) > 1 else ())

    return [
        InputSpec((names[k] if names else None) or input_layer_name(tensor, k), tuple(tensor.shape),
                  np.dtype(getattr(tensor.dtype, "name", tensor.dtype)), aliases(tensor, k))
        for k, tensor in enumerate(inputs)
    ]


def input_layer_name(tensor, k: int) -> str:
    """The name of the Input layer that made ``tensor`` (what ``model.summary()`` shows: Keras 3 names the tensor
    itself ``keras_tensor_N``; tf_keras gives both the layer's name)."""
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    return getattr(layer, "name", None) or getattr(tensor, "name", None) or f"input_{k}"


class _KerasSession:
    """A :class:`~ckptfix.sources.base.Session` over the loaded model (BN call swap / variable assignment)."""

    def __init__(self, model, layers: list[Layer], specs: list[InputSpec], device: str | None = None,
                 output: str | None = None) -> None:
        self._device = device  # every forward call placed there (tf.device); the variables stay where loaded
        self._layers = {layer.name: layer.found for layer in layers}
        self._forward = BatchStatisticsForward(model, [layer.found for layer in layers], output)
        self._inference = InferenceForward(model, output)
        self._assigned = contextlib.ExitStack()
        self.input_specs = specs
        self.fixed_batch = None  # Keras models run any batch size, whatever their Input layers declare
        self.input_names = [spec.name for spec in specs]
        self.training_flag = None
        self.output_name = ",".join(output_names(model, output))  # all the outputs, or --output-tensor's
        self.inference_unavailable = None

    def _model_inputs(self, batch):
        """What the model is called with: the array, or the arrays in the model's input order."""
        return batch if len(self.input_specs) == 1 else [batch[spec.name] for spec in self.input_specs]

    def moments(self, batch, keep_output: bool):
        import tensorflow as tf

        with tf.device(self._device):
            moments, outputs = self._forward.run(self._model_inputs(batch))
            return moments, host(outputs) if keep_output else None

    def inference_outputs(self, batch) -> np.ndarray:
        import tensorflow as tf

        with tf.device(self._device):
            return self._inference.outputs(self._model_inputs(batch))

    def assign_statistics(self, values: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        by_id = {}
        for name, (mean, variance) in values.items():
            bn = self._layers[name]
            by_id[id(bn.mean_variable)] = (bn.mean_variable, mean)
            by_id[id(bn.variance_variable)] = (bn.variance_variable, variance)
        self._assigned.enter_context(InferenceForward.using(by_id))

    def close(self) -> None:
        self._assigned.close()  # the stored statistics back in the variables: the writer's check reads them


class KerasModelSource:
    """A Keras / TF2 file and the Keras model it was loaded into."""

    def __init__(self, checkpoint, model_format: str, options) -> None:
        self._options = options
        self.source: KerasSource = load_source(
            checkpoint, model_format, model=options.model, architecture=options.architecture, unsafe=options.unsafe,
            custom_objects=options.custom_objects,
        )
        self.model_format = self.source.model_format
        self.label, self.graph_label = str(self.source.path), ""
        self.notices = [self.source.notice] if self.source.notice else []
        found = find_batchnorm_layers(self.source.model, self.source.legacy_bessel)
        if not found:
            raise NoBatchNormError(f"no BatchNormalization layers in the model of {self.source.path}: nothing to recalibrate.")
        renorm = [bool(getattr(bn.layer, "renorm", False)) for bn in found]
        found = [bn for bn, kept in zip(found, without_renorm([bn.name for bn in found], renorm, self.notices)) if kept]
        if not found:
            raise NoBatchNormError(f"every BatchNormalization layer in the model of {self.source.path} uses batch "
                                   "renormalization, kept as stored: nothing to recalibrate.")
        self.keys = variable_keys(self.source)
        check_keys(self.source, self.keys, list(self.source.model.weights))
        # a BN layer with trainable=False runs in inference mode when Keras trains the model; a model with no
        # trainable weight at all was frozen as a whole (for export or inference), which says nothing of training
        trains = bool(self.source.model.trainable_weights)
        self.layers = []
        for bn in found:
            mean, variance = bn.mean_variable.numpy(), bn.variance_variable.numpy()
            self.layers.append(Layer(
                name=bn.name, kind=bn.kind,
                mean_key=self.keys[id(bn.mean_variable)], variance_key=self.keys[id(bn.variance_variable)],
                stored_mean=np.asarray(mean, np.float64).reshape(-1),
                stored_variance=np.asarray(variance, np.float64).reshape(-1),
                dtype=str(mean.dtype), bessel=bn.bessel, epsilon=float(bn.layer.epsilon), found=bn,
                frozen=trains and not bn.layer.trainable, virtual_batch_size=bn.virtual_batch_size,
            ))
        self.convention = model_convention(self.source.model)

    @contextlib.contextmanager
    def session(self, layers: list[Layer], data_keys, options, notice: Notice, device: str | None = None) -> Iterator[_KerasSession]:
        session = _KerasSession(self.source.model, layers, _input_specs(self.source.model, options.input_name), device,
                                options.output_tensor)
        try:
            yield session
        finally:
            session.close()

    def cause(self) -> None:
        """Keras files keep no training graph to read a cause from."""
        return None

    @property
    def writes_file(self) -> bool:
        return is_file_format(self.source)

    @property
    def inputs(self) -> list[Path]:
        """The Keras file or folder, and a TF2 checkpoint's folder."""
        return [self.source.path] + ([self.source.prefix.parent] if self.source.prefix is not None else [])

    def written_path(self, destination: Path) -> Path:
        return written_path(self.source, destination)

    def check_output(self, output: Path | None, overwrite: bool) -> Path:
        return check_output(self.source, Path(output) if output is not None else default_output(self.source), overwrite)

    def write(self, new_values: Mapping[str, np.ndarray], destination: Path, overwrite: bool) -> Path:
        return write_output(self.source, new_values, destination, overwrite, self._verifier(new_values))

    def _verifier(self, new_values: Mapping[str, np.ndarray]) -> Callable[[Path], None]:
        """Load the staged output with the format's ordinary call; every weight must be as expected."""
        source, unsafe = self.source, self._options.unsafe
        expected = []
        for variable in source.model.weights:
            value = np.asarray(variable.numpy())
            key = self.keys.get(id(variable))
            if key in new_values:
                value = np.asarray(new_values[key], np.float64).astype(value.dtype).reshape(value.shape)
            expected.append(value)

        def verify(staged: Path) -> None:
            fmt = source.model_format
            if source.loader in (KERAS2_LOAD, KERAS3_LOAD):
                reloaded = load_model_file(staged, source.loader, unsafe, source.custom_objects).weights
            elif fmt in ("weights-h5", "h5"):
                source.model.load_weights(str(staged))
                reloaded = source.model.weights
            else:
                restore_object_checkpoint(source.model, staged / "variables" / "variables" if fmt == "savedmodel" else staged)
                reloaded = source.model.weights
            values = [np.asarray(v.numpy()) for v in reloaded]
            if len(values) != len(expected) or any(
                a.dtype != b.dtype or a.tobytes() != b.tobytes() for a, b in zip(values, expected)
            ):
                raise OutputError(f"the written {fmt} output did not load back as expected; nothing was kept.")

        return verify

    @contextlib.contextmanager
    def stored_values(self, other) -> Iterator[Callable[[str], np.ndarray | None]]:
        opts = self._options
        other_source = load_source(other, self.model_format, model=opts.model, architecture=opts.architecture, unsafe=opts.unsafe,
                                   custom_objects=opts.custom_objects)
        with StoredValues(other_source) as values:
            yield lambda key: values.get(key) if values.has(key) else None
