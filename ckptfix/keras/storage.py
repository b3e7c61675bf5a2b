"""Where each BN variable lives in a Keras / TF2 file, and the atomic write-back of new statistics.

Keys (reported as ``mean_key`` / ``variance_key``):

* ``.keras`` / ``.weights.h5``: the HDF5 dataset path Keras' saver gives the variable
  (``layers/<layer>/vars/<i>``; inside the archive's ``model.weights.h5``), found by running Keras' own
  save traversal (Keras 3's, or Keras 2's for a Keras 2 ``.keras`` archive) without writing anything;
* legacy ``.h5``: ``model_weights/<layer>/<weight name>`` (or ``<layer>/<weight name>`` in a weights-only
  file), in the order Keras' legacy loader assigns them (each top-level layer's trainable then
  non-trainable weights);
* TF2 checkpoints and SavedModel variables: ``<object path>/.ATTRIBUTES/VARIABLE_VALUE``, the object
  path being TensorFlow's own traversal of the model.

Before anything is written, the value stored under every key must equal, byte for byte, the variable the
model loaded from it (a wrong mapping is an error, never a silent write). Writing copies the input bit for
bit and overwrites only the statistics datasets / tensors (cast to their stored dtype); a ``.keras``
archive is re-zipped member by member with each member's own compression, only ``model.weights.h5``
changed. The result is written into a temporary folder beside the destination, loaded back with the
ordinary Keras / TF call, compared (every other weight identical, statistics equal to the new values) and
only then renamed into place.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ckptfix.errors import CheckpointError, OutputError
from ckptfix.io.atomic import atomic_output, check_destination
from ckptfix.io.checkpoint_writer import copy_checkpoint
from ckptfix.io.locate import write_state_file
from ckptfix.keras.formats import KerasSource, object_paths

_ARCHIVE_WEIGHTS = "model.weights.h5"


# ---------------------------------------------------------------------------------------------------- keys


def _saver_paths(model) -> dict[int, str]:
    """``id(variable)`` -> dataset path, by the Keras saver's own traversal (Keras 3, or Keras 2 for a Keras 2
    model) into a store that records paths instead of writing."""
    from ckptfix import compat

    paths: dict[int, str] = {}

    class _Entry:
        def __init__(self, path: str) -> None:
            self._prefix = f"{path}/vars" if path else "vars"

        def __setitem__(self, key, value) -> None:
            paths[id(value)] = f"{self._prefix}/{key}"

    if compat.is_keras2_object(model):
        _keras2_saver_paths(model, _Entry)
        return paths

    from keras.src.saving import saving_lib

    class _Recorder(saving_lib.H5IOStore):  # Keras 3 checks the store's type
        def __init__(self) -> None:  # no file: only the paths are recorded
            self._entry = _Entry("")

        def __bool__(self) -> bool:
            return True

        def make(self, path, metadata=None):
            self._entry = _Entry(path)
            return self

        def __setitem__(self, key, value) -> None:
            self._entry[key] = value

    saving_lib._save_state(model, weights_store=_Recorder(), assets_store=None, inner_path="", visited_saveables=set())
    return paths


def _keras2_saver_paths(model, entry) -> None:
    """Keras 2's saver (tf_keras', or tf.keras' on TensorFlow 2.15) stores ``v.numpy()`` copies: while its
    traversal runs, each layer using the base ``save_own_variables`` records its variables themselves, in that
    method's order (trainable then non-trainable). Restored afterwards; other layers' weights stay unmapped (an
    error in check_keys)."""
    from ckptfix import compat
    from ckptfix.keras.batchnorm import walk_layers

    Layer = compat.keras2_module("engine.base_layer").Layer
    keras2_saving = compat.keras2_module("saving.saving_lib")

    def recording(layer):
        def save_own_variables(store):
            for index, variable in enumerate(layer._trainable_weights + layer._non_trainable_weights):
                store[str(index)] = variable
        return save_own_variables

    class _Recorder:
        def __bool__(self) -> bool:
            return True

        def make(self, path):
            return entry(path)

    layers = [model] + [layer for _, layer in walk_layers(model)]
    patched = [layer for layer in layers if type(layer).save_own_variables is Layer.save_own_variables]
    try:
        for layer in patched:
            object.__setattr__(layer, "save_own_variables", recording(layer))
        keras2_saving._save_state(model, _Recorder(), None, "", set())
    finally:
        for layer in patched:
            layer.__dict__.pop("save_own_variables", None)


def _legacy_h5_paths(model, h5) -> dict[int, str]:
    """``id(variable)`` -> dataset path in a legacy ``.h5``, mirroring Keras' order-based legacy loader."""
    group = h5["model_weights"] if "model_weights" in h5 else h5
    root = "model_weights/" if "model_weights" in h5 else ""

    def names(node, attribute):
        values = node.attrs.get(attribute, [])
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    saved = [name for name in names(group, "layer_names") if names(group[name], "weight_names")]
    layers = [layer for layer in model.layers if layer.trainable_weights + layer.non_trainable_weights]
    if len(saved) != len(layers):
        raise CheckpointError(f"{h5.filename} has {len(saved)} layers with weights, the model {len(layers)}.")
    paths = {}
    for layer_name, layer in zip(saved, layers):
        weight_names = names(group[layer_name], "weight_names")
        for variable, weight_name in zip(layer.trainable_weights + layer.non_trainable_weights, weight_names):
            paths[id(variable)] = f"{root}{layer_name}/{weight_name}"
    return paths


def variable_keys(source: KerasSource) -> dict[int, str]:
    """``id(variable)`` -> where the variable is stored in ``source``'s file (see the module docstring)."""
    if source.model_format in ("keras", "weights-h5"):
        return _saver_paths(source.model)
    if source.model_format == "h5":
        import h5py

        with h5py.File(source.path, "r") as h5:
            return _legacy_h5_paths(source.model, h5)
    return object_paths(source.model, source.prefix)


# ---------------------------------------------------------------------------------------------------- reading


class StoredValues:
    """Read the stored arrays by key, from whichever file ``source`` is (context manager)."""

    def __init__(self, source: KerasSource) -> None:
        self._source = source
        self._close: list[Callable[[], None]] = []

    def __enter__(self) -> "StoredValues":
        import h5py

        fmt = self._source.model_format
        if fmt == "keras":
            archive = zipfile.ZipFile(self._source.path)
            handle = archive.open(_ARCHIVE_WEIGHTS)
            self._h5 = h5py.File(handle, "r")
            self._close += [self._h5.close, handle.close, archive.close]
        elif fmt in ("weights-h5", "h5"):
            self._h5 = h5py.File(self._source.path, "r")
            self._close.append(self._h5.close)
        else:
            import tensorflow as tf

            self._reader = tf.train.load_checkpoint(str(self._source.prefix))
        return self

    def __exit__(self, *exc) -> None:
        for close in self._close:
            close()

    def has(self, key: str) -> bool:
        if hasattr(self, "_h5"):
            return key in self._h5
        return self._reader.has_tensor(key)

    def get(self, key: str) -> np.ndarray:
        if hasattr(self, "_h5"):
            return np.asarray(self._h5[key][()])
        return np.asarray(self._reader.get_tensor(key))


def check_keys(source: KerasSource, keys: Mapping[int, str], variables: list) -> None:
    """Every variable's stored value must equal what the model loaded (guards the key mapping)."""
    with StoredValues(source) as stored:
        for variable in variables:
            key = keys.get(id(variable))
            if key is None or not stored.has(key):
                name = getattr(variable, "path", None) or variable.name
                raise CheckpointError(
                    f"{source.path} holds no value for the model's weight {name}: pass the model it was saved from "
                    "(a Keras 3 model nested in another is not tracked by tf.train.Checkpoint: save .weights.h5 instead)."
                )
            value = np.asarray(variable.numpy())
            saved = stored.get(key)
            if saved.shape != value.shape or saved.astype(value.dtype).tobytes() != value.tobytes():
                raise CheckpointError(f"{source.path}: {key} does not hold the loaded value of its variable; nothing was written.")


# ---------------------------------------------------------------------------------------------------- output


def default_output(source: KerasSource) -> Path:
    """``model-recalibrated.keras`` beside a file; ``<folder>-recalibrated`` for checkpoint and SavedModel folders."""
    path = source.path.absolute()
    if source.model_format in ("keras", "h5", "weights-h5"):
        name = path.name
        for suffix in (".weights.h5", ".keras", ".hdf5", ".h5"):
            if name.lower().endswith(suffix):
                return path.with_name(name[: -len(suffix)] + "-recalibrated" + name[-len(suffix):])
    folder = path if source.model_format == "savedmodel" else source.prefix.parent.absolute()
    return folder.with_name(folder.name + "-recalibrated")


def is_file_format(source: KerasSource) -> bool:
    return source.model_format in ("keras", "h5", "weights-h5")


def check_output(source: KerasSource, output: Path, overwrite: bool) -> Path:
    """Refuse an output that is, contains or sits inside the input, or exists without ``overwrite``."""
    output = Path(output).expanduser().absolute()
    if source.model_format == "keras" and not output.name.endswith(".keras"):
        raise OutputError(f"output {output}: Keras only loads archives named *.keras; choose such a -o/--output.")
    if source.model_format == "weights-h5" and not output.name.endswith(".weights.h5"):
        raise OutputError(f"output {output}: Keras 3 only loads weights named *.weights.h5; choose such a -o/--output.")
    inputs = [source.path] + ([source.prefix.parent] if source.prefix is not None else [])
    return check_destination(output, inputs, is_folder=not is_file_format(source), overwrite=overwrite,
                             what=f"the input {source.path}", copies=_copied(source))


def _copied(source: KerasSource) -> Path | None:
    """The folder whose entries a write copies into the output (a Keras SavedModel's), else None."""
    return source.path if source.model_format == "savedmodel" else None


def _patch_h5(path: Path, new_values: Mapping[str, np.ndarray]) -> None:
    """Overwrite the datasets at ``new_values``' keys in place, each in its stored dtype and shape."""
    import h5py

    with h5py.File(path, "r+") as h5:
        for key, value in new_values.items():
            dataset = h5[key]
            dataset[...] = np.asarray(value, np.float64).astype(dataset.dtype).reshape(dataset.shape)


def _write_archive(source: Path, destination: Path, new_values: Mapping[str, np.ndarray], scratch: Path) -> None:
    weights = scratch / "patched-model.weights.h5"
    with zipfile.ZipFile(source) as archive:
        if _ARCHIVE_WEIGHTS not in archive.namelist():
            raise CheckpointError(f"{source} has no {_ARCHIVE_WEIGHTS} (sharded or .npz weights are not supported).")
        with archive.open(_ARCHIVE_WEIGHTS) as member, open(weights, "wb") as out:
            shutil.copyfileobj(member, out)
        _patch_h5(weights, new_values)
        with zipfile.ZipFile(destination, "w") as rewritten:
            for info in archive.infolist():
                data = weights.read_bytes() if info.filename == _ARCHIVE_WEIGHTS else archive.read(info)
                rewritten.writestr(info, data, compress_type=info.compress_type)
    weights.unlink()


def write_output(
    source: KerasSource,
    new_values: Mapping[str, np.ndarray],
    output: Path,
    overwrite: bool,
    verify: Callable[[Path], None],
) -> Path:
    """Write ``source`` with ``new_values`` (key -> array) replaced at ``output``, atomically
    (:func:`ckptfix.io.atomic.atomic_output`: staged, locked, re-checked, swapped).

    ``verify(staged_path)`` loads the staged result back with the ordinary Keras / TF call and raises if it
    differs from what was meant; only then is the result put in place. Returns the written path (the
    checkpoint prefix for TF2 checkpoints).
    """
    fmt = source.model_format
    with atomic_output(output, overwrite=overwrite, is_folder=not is_file_format(source), copies=_copied(source)) as staged:
        loaded = staged.path
        if fmt == "keras":
            _write_archive(source.path, staged.path, new_values, staged.folder)
        elif fmt in ("h5", "weights-h5"):
            shutil.copyfile(source.path, staged.path)
            _patch_h5(staged.path, new_values)
        elif fmt == "savedmodel":
            shutil.copytree(source.path, staged.path, dirs_exist_ok=True)
            for stale in (staged.path / "variables").glob("variables.*"):
                stale.unlink()
            copy_checkpoint(source.prefix, staged.path / "variables" / "variables", new_values,
                            check_interrupt=staged.check_interrupt)
        else:
            loaded = staged.path / source.prefix.name
            copy_checkpoint(source.prefix, loaded, new_values, check_interrupt=staged.check_interrupt)
            write_state_file(staged.path, source.prefix.name)
        staged.check_interrupt()
        verify(loaded)
    return written_path(source, output)


def written_path(source: KerasSource, output: Path) -> Path:
    """What a write to ``output`` gives to restore: the checkpoint prefix for TF2 checkpoints, else ``output``."""
    return output / source.prefix.name if source.model_format == "tf-checkpoint" else output
