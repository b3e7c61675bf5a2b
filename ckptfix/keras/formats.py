"""Which Keras / TF2 format CKPT is, and how to get the Keras model whose BN layers it stores.

Formats (``--model-format``; detected from the path otherwise):

============  =====================================================  =====================================
name          what it is                                             the model comes from
============  =====================================================  =====================================
keras         ``.keras`` archive (config + model.weights.h5)          the archive (Keras 2's archives: with Keras 2)
h5            legacy Keras ``.h5`` / ``.hdf5`` (Keras 2 / tf.keras)   the file (full model), or ``--model`` /
                                                                      ``--architecture`` with the file's weights
weights-h5    Keras 3 ``.weights.h5``                                 ``--model`` or ``--architecture``
tf-checkpoint TF2 object-based checkpoint (``tf.train.Checkpoint``,   ``--model`` or ``--architecture``
              tf_keras ``save_weights``): index with
              ``_CHECKPOINTABLE_OBJECT_GRAPH``, no ``.meta``
savedmodel    SavedModel folder (``saved_model.pb``) keeping a Keras   the folder (``keras_metadata.pb``), or
              model; any other SavedModel is repaired at graph level  ``--model`` / ``--architecture``
              (:mod:`ckptfix.sources.saved_model`)
tf1           a TF1 checkpoint with its ``.meta`` (the graph path)    --
============  =====================================================  =====================================

Loading runs in Keras' safe mode unless ``unsafe`` is set: a ``Lambda`` layer holding Python bytecode is
refused (``--unsafe`` allows it). ``--model package.module:function`` always runs the named function.

Custom classes (a custom layer in a saved config) are Keras' ``custom_objects``: ``--import package.module``
imports the module defining or registering them (``--import module:NAME``: a dict of them; API
``custom_objects=``); the loader gets them, and a file naming classes it does not know is an error listing them.
A Keras 2-era file loads with Keras 2 (:func:`ckptfix.compat.keras2`: tf_keras, or tf.keras on TensorFlow 2.15),
so its custom classes must subclass that Keras's ``Layer`` (Keras 2 code on TensorFlow >= 2.16 imports
``tf_keras as keras``); a Keras 3 class there is named in the error.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ckptfix import compat
from ckptfix.errors import CheckpointError, CkptfixError, UnsafeModelError
from ckptfix.io.locate import STATE_FILE, prefix_named_by, read_state_file
from ckptfix.user_code import describe, import_custom_objects, resolve_function, running_user_code

MODEL_FORMATS = ("keras", "h5", "weights-h5", "tf-checkpoint", "savedmodel", "tf1")
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
#: how a model was loaded (:attr:`KerasSource.loader`): the whole file by Keras 2 or Keras 3, or weights into a
#: model built otherwise (``--model`` / ``--architecture``)
KERAS2_LOAD, KERAS3_LOAD, LOAD_WEIGHTS, CHECKPOINT_READ = "Keras 2", "Keras 3", "model.load_weights", "tf.train.Checkpoint.read"


@dataclass
class KerasSource:
    """A CKPT in a Keras / TF2 format: where its statistics live (``path``, ``prefix``) and its model."""

    model_format: str
    path: Path
    model: object = None
    #: the TF2 checkpoint prefix (tf-checkpoint) or ``variables/variables`` of a SavedModel
    prefix: Path | None = None
    #: layer name -> Bessel-corrected convention, from a Keras 2-era file's saved config
    legacy_bessel: dict[str, bool] = field(default_factory=dict)
    keras_version: str | None = None
    loader: str = ""
    #: which checkpoint a TF2 folder's state file from another machine was taken to mean (None: as named)
    notice: str | None = None
    #: Keras custom objects the model was loaded with (``--import``), for loading the output back
    custom_objects: dict = field(default_factory=dict)


def _checkpoint_prefix(path: Path) -> tuple[Path | None, str | None]:
    """The prefix a TF2 checkpoint path names: a folder (its ``checkpoint`` state file, read with the one trust
    rule of :func:`ckptfix.io.locate.read_state_file`, whose CheckpointError propagates; without one, its only
    prefix), a prefix or one of its files; None when it names none. With it, the state file's notice (or None)."""
    if path.is_dir():
        if not (path / STATE_FILE).is_file():  # tf.train.Checkpoint.write() leaves no state file: a lone prefix is meant
            indexes = sorted(path.glob("*.index"))
            return (indexes[0].with_suffix("") if len(indexes) == 1 else None), None
        return read_state_file(path)
    prefix = prefix_named_by(path)
    return (prefix if prefix.with_name(prefix.name + ".index").is_file() else None), None


def _is_object_checkpoint(prefix: Path) -> bool:
    import tensorflow as tf

    try:
        return tf.train.load_checkpoint(str(prefix)).has_tensor(_OBJECT_GRAPH_KEY)
    except (tf.errors.OpError, ValueError):
        return False


def checkpoint_root(model, prefix: Path):
    """The object the TF2 checkpoint was written from: the model itself, or ``tf.train.Checkpoint(model=...)``."""
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(str(prefix)).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    children = {child.local_name for child in graph.nodes[0].children}
    if "model" in children and not hasattr(model, "model"):
        wrapper = tf.train.Checkpoint(model=model)
        return wrapper, wrapper
    return tf.train.Checkpoint(root=model), model


def object_paths(model, prefix: Path) -> dict[int, str]:
    """``id(variable)`` -> its key in the TF2 checkpoint at ``prefix``: ``<object path>/.ATTRIBUTES/VARIABLE_VALUE``,
    the object path being TensorFlow's own traversal of the checkpoint's root (:func:`checkpoint_root`)."""
    from tensorflow.python.checkpoint import graph_view, util

    root = checkpoint_root(model, prefix)[1]
    names = util.objects_ids_and_slot_variables_and_paths(graph_view.ObjectGraphView(root))[4]
    return {id(obj): name + _VARIABLE_SUFFIX for obj, name in names.items()}


def _check_entries(model, prefix: Path) -> None:
    """Every model variable the checkpoint keeps is stored with the variable's dtype and shape (a restore would
    fail on the first that is not, naming a dtype in C++ words or no key at all)."""
    import tensorflow as tf

    from ckptfix.io.checkpoint_reader import Expected, check_expected

    keys = object_paths(model, prefix)
    expected = []
    for variable in model.variables:
        if id(variable) in keys:
            shape = tuple(variable.shape)
            expected.append(Expected(keys[id(variable)], tf.as_dtype(variable.dtype), None if None in shape else shape))
    check_expected(tf.train.load_checkpoint(str(prefix)), prefix, expected, "the model from --model/--architecture",
                   "the checkpoint is incomplete, or the model is not the one it was saved from",
                   "the model is not the one it was saved from, or the checkpoint was changed after saving")


def restore_object_checkpoint(model, prefix: Path) -> None:
    """Read a TF2 object-based checkpoint into ``model``; every model variable must be matched."""
    import tensorflow as tf

    from ckptfix.errors import error_reason
    from ckptfix.io.checkpoint_reader import damaged_error

    try:
        _check_entries(model, prefix)
        status = checkpoint_root(model, prefix)[0].read(str(prefix))
        status.assert_existing_objects_matched()
    except (AssertionError, tf.errors.OpError, ValueError) as error:
        if isinstance(error, tf.errors.DataLossError) or "Checksum does not match" in error_reason(error):
            raise damaged_error(error, prefix) from None
        raise CheckpointError(
            f"checkpoint {prefix} does not fit the model from --model/--architecture: {error_reason(error)[:200]}"
        ) from None


def detect_model_format(checkpoint, meta=None) -> str | None:
    """The Keras / TF2 format of ``checkpoint``, or None for a TF1 checkpoint (or anything else)."""
    if meta is not None:
        return None
    path = Path(checkpoint).expanduser()
    name = path.name.lower()
    if name.endswith(".weights.h5"):
        return "weights-h5"
    if name.endswith(".keras"):
        return "keras"
    if name.endswith((".h5", ".hdf5")):
        return "h5"
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "savedmodel"
    try:
        prefix, _ = _checkpoint_prefix(path)
    except CheckpointError:  # the TF1 locator reads the same state file and reports why
        return None
    if prefix is None or prefix.with_name(prefix.name + ".meta").is_file():
        return None
    return "tf-checkpoint" if _is_object_checkpoint(prefix) else None


def _first_line(error: Exception, limit: int = 200) -> str:
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if len(line) <= limit else line[:limit] + " ..."


def _check_safe(error: Exception, what: str) -> None:
    if "Lambda" in str(error) and "safe_mode" in str(error):
        raise UnsafeModelError(
            f"{what} has a Lambda layer holding Python code, which safe mode does not load: "
            "pass --unsafe (unsafe=True) if you trust the file."
        ) from None


def _python_lambdas(config) -> list[str]:
    """Names of the Lambda layers in a (Keras 2 style) config whose function is stored as Python bytecode."""
    found = []
    if isinstance(config, dict):
        inner = config.get("config")
        if config.get("class_name") == "Lambda" and isinstance(inner, dict):
            function = inner.get("function")
            kind = function.get("class_name") if isinstance(function, dict) else None
            if kind in ("__lambda__", "function"):  # Keras 3: bytecode, or a function named by module + name
                bytecode = kind == "__lambda__"
            else:  # Keras 2: "function_type" "lambda" (marshalled bytecode) or "function" (module + name)
                bytecode = inner.get("function_type", "lambda") == "lambda"
            if bytecode:
                found.append(str(inner.get("name", "lambda")))
        for value in config.values():
            found += _python_lambdas(value)
    elif isinstance(config, list):
        for value in config:
            found += _python_lambdas(value)
    return found


def _refuse_python_lambdas(configs: list, what: str, unsafe: bool) -> None:
    """tf_keras' legacy .h5 and SavedModel loaders unmarshal Lambda bytecode even in safe mode: check first."""
    names = [name for config in configs for name in _python_lambdas(config)]
    if names and not unsafe:
        raise UnsafeModelError(
            f"{what} has a Lambda layer holding Python code ({names[0]}), which safe mode does not load: "
            "pass --unsafe (unsafe=True) if you trust the file."
        )


def _savedmodel_configs(path: Path) -> list:
    """The layer configs a Keras 2 SavedModel's keras_metadata.pb records (JSON per saved object)."""
    metadata = compat.keras2_saved_metadata()()
    metadata.ParseFromString((path / "keras_metadata.pb").read_bytes())
    configs = []
    for node in metadata.nodes:
        try:
            configs.append(json.loads(node.metadata))
        except ValueError:
            continue
    return configs


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(error: Exception, limit: int = 200) -> str:
    """The informative line of a Keras load error: a failure inside a layer's ``call`` is reported as
    "Exception encountered when calling X.call()." then the cause, in bold."""
    lines = [_ANSI.sub("", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Exception encountered", "Arguments received", "•"))]
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= limit else line[:limit] + " ..."


def _layer_classes(config) -> list[str]:
    """The class names of the layers a saved model config builds (wrapped layers included), in order."""
    found: list[str] = []

    def visit(node, is_layer: bool) -> None:
        if isinstance(node, dict):
            if is_layer and isinstance(node.get("class_name"), str) and node["class_name"] not in found:
                found.append(node["class_name"])
            for key, value in node.items():
                visit(value, key in ("layers", "layer"))
        elif isinstance(node, list):
            for value in node:
                visit(value, is_layer)

    visit(config, False)
    return found


def _unknown_classes(config, keras_module, custom_objects: dict) -> list[str]:
    """Layer classes of ``config`` that ``keras_module`` (Keras 2 or 3) cannot resolve by itself or from
    ``custom_objects`` (registered classes resolve by their registered name, which a saved config may not use)."""
    known = {"Functional", "Model", "Sequential"}
    return [name for name in _layer_classes(config) if name not in known and name not in custom_objects
            and not hasattr(keras_module.layers, name) and keras_module.utils.get_registered_object(name) is None]


def _objects_label(specs) -> str:
    if specs is None or isinstance(specs, dict):
        return "custom_objects="
    return " ".join(f"--import {spec}" for spec in ([specs] if isinstance(specs, str) else specs))


def _keras3_classes(custom_objects: dict) -> list[str]:
    """The custom classes that subclass a Keras 3 class (which Keras 2 does not run as its own)."""
    import inspect

    return [name for name, value in custom_objects.items() if inspect.isclass(value)
            and any(compat.is_keras3_class(base) for base in value.__mro__)]


def _load_failure(error: Exception, path: Path, loader: str, config, custom_objects: dict, specs) -> CheckpointError:
    """The user error for a model file its loader (:data:`KERAS2_LOAD` or :data:`KERAS3_LOAD`) cannot build:
    unknown custom classes named with the option that supplies them; a failure with the user's classes named
    with the classes' origin."""
    import keras

    label = compat.keras2_label() if loader == KERAS2_LOAD else "Keras"
    unknown = []
    named = re.findall(r"Unknown \w+: '?(\w+)'?|Could not locate (?:class|function) '(\w+)'", str(error))
    if named:  # tf_keras: "Unknown layer: 'X'"; Keras 3: "Could not locate class 'X'" -- the first one only
        keras_module = compat.keras2() if loader == KERAS2_LOAD else keras
        unknown = (_unknown_classes(config, keras_module, custom_objects) if config is not None else []) \
            or [next(name for name in named[0] if name)]
    if unknown:
        what = "class {} (a custom layer)" if len(unknown) == 1 else "classes {} (custom layers)"
        return CheckpointError(
            f"{label} cannot load {path}: unknown layer {what.format(', '.join(unknown))}: pass --import MODULE, "
            "the module that defines or registers it (MODULE:NAME for a dict of custom objects; API: "
            "custom_objects=), or --model MODULE:FN building the model."
        )
    message = f"{label} cannot load {path}"
    if custom_objects:
        message += f" with the classes of {_objects_label(specs)}"
        keras3 = _keras3_classes(custom_objects) if loader == KERAS2_LOAD else []
        if keras3:
            verb = "subclasses" if len(keras3) == 1 else "subclass"
            return CheckpointError(
                f"{message}: {_reason(error)}. {', '.join(keras3)} {verb} Keras 3's Layer, but this Keras 2-era file "
                f"loads with {label}: define them on {label} (import {label} as keras), or pass --model MODULE:FN."
            )
    return CheckpointError(f"{message}: {_reason(error)}")


def _load_errors(custom_objects: dict) -> tuple:
    """What a load raises for a file it cannot build; with the user's classes, anything their code raises."""
    return (Exception,) if custom_objects else (ValueError, TypeError, KeyError, OSError)


def _keras_load(path: Path, unsafe: bool, custom_objects: dict | None = None, specs=None, config=None):
    import keras

    compat.refuse_tf_keras_beside_keras2()
    custom_objects = custom_objects or {}
    try:
        with compat.keras_v2_behavior():
            return keras.saving.load_model(str(path), compile=False, safe_mode=not unsafe, custom_objects=custom_objects)
    except _load_errors(custom_objects) as error:
        _check_safe(error, str(path))
        raise _load_failure(error, path, KERAS3_LOAD, config, custom_objects, specs) from None


def _keras2_load(path: Path, unsafe: bool, custom_objects: dict | None = None, specs=None, config=None):
    """A Keras 2-era file with the Keras 2 code (:func:`ckptfix.compat.keras2`): its layers keep their own
    semantics (fused BN)."""
    compat.refuse_tf_keras_beside_keras2()
    custom_objects = custom_objects or {}
    try:
        with compat.keras_v2_behavior(), _ghost_axes_taken_off(path) as readable:
            return compat.keras2().models.load_model(str(readable), compile=False, safe_mode=not unsafe,
                                                     custom_objects={**_ghost_batchnorm_loader(), **custom_objects})
    except _load_errors(custom_objects) as error:
        _check_safe(error, str(path))
        raise _load_failure(error, path, KERAS2_LOAD, config, custom_objects, specs) from None


def _ghost_config(config: dict) -> dict:
    """A Keras 2 BN layer's config with its ``axis`` as given: Keras 2 saves a built ghost BN layer
    (``virtual_batch_size``) with the group axis its build inserts counted (one more than given) and cannot load
    the file back ("Invalid value for `axis` argument"; keras-team/tf-keras#546)."""
    if config.get("virtual_batch_size") is None:
        return config
    axis = config["axis"]
    return dict(config, axis=[a - 1 for a in axis] if isinstance(axis, (list, tuple)) else axis - 1)


def _ghost_batchnorm_loader() -> dict:
    """Keras 2's ``BatchNormalization`` built from :func:`_ghost_config` (under the class's name in
    ``custom_objects``, as HDF5 and SavedModel files look their classes up)."""
    keras2 = compat.keras2()

    class BatchNormalization:
        @staticmethod
        def from_config(config: dict):
            return keras2.layers.BatchNormalization.from_config(_ghost_config(config))

    return {"BatchNormalization": BatchNormalization}


@contextlib.contextmanager
def _ghost_axes_taken_off(path: Path) -> Iterator[Path]:
    """``path``, or for a Keras 2 ``.keras`` archive with ghost BN layers (whose classes are looked up by module, not
    by ``custom_objects``) a temporary copy whose ``config.json`` has their configs as :func:`_ghost_config` gives."""
    import zipfile

    config = _archive_config(path, required=False) if zipfile.is_zipfile(path) else None
    fixed = _map_batchnorm_configs(config, _ghost_config) if config is not None else None
    if fixed is None or fixed == config:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ckptfix-ghost-") as folder:
        copy = Path(folder) / path.name
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w") as target:
            for item in source.infolist():
                data = json.dumps(fixed).encode() if item.filename == "config.json" else source.read(item)
                target.writestr(item, data)
        yield copy


def _map_batchnorm_configs(node, change):
    """``node`` (a model config) with ``change`` applied to the config of every ``BatchNormalization`` layer in it."""
    if isinstance(node, list):
        return [_map_batchnorm_configs(value, change) for value in node]
    if not isinstance(node, dict):
        return node
    mapped = {key: _map_batchnorm_configs(value, change) for key, value in node.items()}
    if node.get("class_name") == "BatchNormalization" and isinstance(node.get("config"), dict):
        mapped["config"] = change(node["config"])
    return mapped


def load_model_file(path: Path, loader: str, unsafe: bool, custom_objects: dict | None = None):
    """Load a whole-model file (a written output, for its check) with the loader that read the input."""
    if loader == KERAS2_LOAD:
        return _keras2_load(path, unsafe, custom_objects)
    return _keras_load(path, unsafe, custom_objects)


def _from_function(model) -> object:
    """``model``: a callable, or ``package.module:function`` naming one; either returns the built model."""
    function = resolve_function(model, "--model")
    with running_user_code(describe("--model", model), function):
        built = function()
    if not hasattr(built, "layers") or not hasattr(built, "weights"):
        raise CkptfixError(f"--model {model} returned {type(built).__name__}, not a Keras model.")
    if not built.weights:
        raise CkptfixError(f"--model {model} returned a model without weights: build it (call it on an input) first.")
    return built


def _from_architecture(architecture: Path, unsafe: bool, custom_objects: dict | None = None):
    """A model from a ``.keras`` file (its weights are then replaced) or a model config ``.json``."""
    import keras

    architecture = Path(architecture).expanduser()
    if not architecture.is_file():
        raise CkptfixError(f"--architecture {architecture} does not exist: pass a .keras file or a model config .json.")
    if architecture.name.lower().endswith(".keras"):
        return _keras_load(architecture, unsafe, custom_objects)
    try:
        from keras.src.saving import serialization_lib

        config = json.loads(architecture.read_text())
        _refuse_python_lambdas([config], f"--architecture {architecture}", unsafe)
        with serialization_lib.SafeModeScope(not unsafe), compat.keras_v2_behavior():
            return keras.models.model_from_json(json.dumps(config), custom_objects=custom_objects)
    except (ValueError, TypeError, KeyError) as error:
        _check_safe(error, str(architecture))
        raise CkptfixError(f"--architecture {architecture}: not a Keras model config ({str(error).splitlines()[0]}).") from None


def _weights_only_model(model, architecture, unsafe: bool, path: Path, what: str, custom_objects: dict | None = None):
    if model is not None:
        return _from_function(model)
    if architecture is not None:
        return _from_architecture(architecture, unsafe, custom_objects)
    raise CkptfixError(
        f"{path} is {what}, which holds no architecture: pass --model package.module:function (returning the "
        "built Keras model) or --architecture model.keras|config.json."
    )


def _h5_file(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise CheckpointError(f"cannot read {path} as HDF5: {error}") from None


def _legacy_conventions(config: dict, model) -> dict[str, bool]:
    """Layer name -> fused (Bessel) for the BN layers of a Keras 2-era model config."""
    from ckptfix.keras.batchnorm import is_batchnorm, legacy_fused, walk_layers

    configs = {}

    def collect(node) -> None:
        if isinstance(node, dict):
            if node.get("class_name") in ("BatchNormalization", "SyncBatchNormalization") and "config" in node:
                configs[node["config"].get("name")] = node["config"]
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(config)
    conventions = {}
    for _, layer in walk_layers(model):
        if is_batchnorm(layer) and layer.name in configs:
            rank = len(layer.input.shape) if _has_input(layer) else None
            conventions[layer.name] = legacy_fused(configs[layer.name], rank)
    return conventions


def _has_input(layer) -> bool:
    try:
        return layer.input is not None
    except (AttributeError, ValueError):
        return False


def _attribute(h5, name: str) -> str | None:
    value = h5.attrs.get(name)
    return value.decode() if isinstance(value, bytes) else value


def load_source(checkpoint, model_format: str, *, model=None, architecture=None, unsafe: bool = False,
                custom_objects=None) -> KerasSource:
    """Resolve ``checkpoint`` in ``model_format`` and load its model with the stored weights (``custom_objects``:
    the specs of :func:`ckptfix.user_code.import_custom_objects`)."""
    path = Path(checkpoint).expanduser()
    objects = import_custom_objects(custom_objects)
    source = _load_source(path, model_format, model, architecture, unsafe, objects, custom_objects)
    source.custom_objects = objects
    return source


def _load_weights(built, path: Path) -> None:
    try:
        built.load_weights(str(path))
    except (ValueError, KeyError, OSError) as error:
        raise CheckpointError(f"{path} does not fit the model from --model/--architecture: {str(error).splitlines()[0]}") from None


def _load_source(path: Path, model_format: str, model, architecture, unsafe: bool, objects: dict, specs) -> KerasSource:
    if model_format not in MODEL_FORMATS:
        raise CkptfixError(f"--model-format must be one of {', '.join(MODEL_FORMATS)} (got {model_format}).")
    if model_format in ("keras", "h5", "weights-h5") and not path.is_file():
        raise CheckpointError(f"{path} does not exist: pass the {model_format} file to repair.")
    if model_format == "keras":
        if model is not None or architecture is not None:
            raise CkptfixError("a .keras archive holds its own architecture: leave out --model/--architecture.")
        version = _archive_version(path)
        if version and version.startswith("2."):  # Keras 2's own .keras archive: Keras 3 cannot read its config
            if compat.keras2_name() is None:
                raise CkptfixError(f"{path} was written by tf_keras (Keras {version}): install tf_keras to load it.")
            _refuse_python_lambdas([_archive_config(path)], str(path), unsafe)
            loaded = _keras2_load(path, unsafe, objects, specs, _archive_config(path))
            return KerasSource("keras", path, loaded, keras_version=version, loader=KERAS2_LOAD)
        if not compat.has_keras3():
            raise CkptfixError(f"{path} was written by Keras {version or 3}, which needs TensorFlow 2.16 or later "
                               f"(ckptfix supports {compat.RANGE}).")
        loaded = _keras_load(path, unsafe, objects, specs, _archive_config(path, required=False))
        return KerasSource("keras", path, loaded, keras_version=version, loader=KERAS3_LOAD)
    if model_format == "weights-h5":
        built = _weights_only_model(model, architecture, unsafe, path, "a Keras 3 .weights.h5 file", objects)
        _load_weights(built, path)
        return KerasSource("weights-h5", path, built, loader=LOAD_WEIGHTS)
    if model_format == "h5":
        with _h5_file(path) as h5:
            config_text = _attribute(h5, "model_config")
            version = _attribute(h5, "keras_version") or (_attribute(h5["model_weights"], "keras_version") if "model_weights" in h5 else None)
        config = None if config_text is None else json.loads(config_text)
        if config is not None and model is None and architecture is None:
            _refuse_python_lambdas([config], str(path), unsafe)
        if config is None or model is not None or architecture is not None:
            # --model / --architecture on a full-model file: the user's architecture (the saved config may not
            # deserialise), the file's weights
            built = _weights_only_model(model, architecture, unsafe, path, "a legacy weights-only .h5 file", objects)
            _load_weights(built, path)
            loaded, loader = built, LOAD_WEIGHTS
        elif (version and version.startswith(("1.", "2.")) or not compat.has_keras3()) and compat.keras2_name():
            loaded, loader = _keras2_load(path, unsafe, objects, specs, config), KERAS2_LOAD
        else:
            loaded, loader = _keras_load(path, unsafe, objects, specs, config), KERAS3_LOAD
        conventions = {}
        if loader == KERAS3_LOAD and version and version.startswith(("1.", "2.")):
            conventions = _legacy_conventions(config, loaded)
        return KerasSource("h5", path, loaded, legacy_bessel=conventions, keras_version=version, loader=loader)
    if model_format == "tf-checkpoint":
        prefix, notice = _checkpoint_prefix(path)
        if prefix is None or not _is_object_checkpoint(prefix):
            raise CheckpointError(f"{path} is not a TF2 object-based checkpoint (no index with {_OBJECT_GRAPH_KEY}).")
        built = _weights_only_model(model, architecture, unsafe, path, "a TF2 object-based checkpoint", objects)
        restore_object_checkpoint(built, prefix)
        return KerasSource("tf-checkpoint", path, built, prefix=prefix, loader=CHECKPOINT_READ, notice=notice)
    if model_format == "savedmodel":
        return _load_savedmodel(path, model, architecture, unsafe, objects, specs)
    raise CkptfixError("--model-format tf1 is a TF1 checkpoint: it takes the TF1 path.")


def _archive_version(path: Path) -> str | None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("metadata.json")).get("keras_version")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return None


def _archive_config(path: Path, required: bool = True) -> dict | None:
    """The model config of a ``.keras`` archive; None when unreadable and not ``required`` (Keras' own load
    then says why)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        if not required:
            return None
        raise CheckpointError(f"cannot read the config of {path}: {_first_line(error)}") from None


def _load_savedmodel(path: Path, model, architecture, unsafe: bool, objects: dict, specs) -> KerasSource:
    prefix = path / "variables" / "variables"
    if not prefix.with_name("variables.index").is_file():
        raise CheckpointError(f"SavedModel {path} has no variables/variables.index: nothing to repair.")
    if model is not None or architecture is not None:
        built = _weights_only_model(model, architecture, unsafe, path, "a SavedModel", objects)
        restore_object_checkpoint(built, prefix)
        return KerasSource("savedmodel", path, built, prefix=prefix, loader=CHECKPOINT_READ)
    if not (path / "keras_metadata.pb").is_file():
        raise CheckpointError(
            f"SavedModel {path} keeps no Keras model for --model-format savedmodel (no keras_metadata.pb): leave "
            "out --model-format to repair it at graph level, or pass --model/--architecture."
        )
    if compat.keras2_name() is None:
        raise CkptfixError(f"SavedModel {path} was written by tf_keras: install tf_keras to load it.")
    _refuse_python_lambdas(_savedmodel_configs(path), f"SavedModel {path}", unsafe)
    loaded = _keras2_load(path, unsafe, objects, specs)
    return KerasSource("savedmodel", path, loaded, prefix=prefix, loader=KERAS2_LOAD)
