"""The options of a run, as one frozen :class:`Options`: validated once, then passed whole.

:func:`ckptfix.recalibrate`, :func:`~ckptfix.diagnose` and :func:`~ckptfix.inspect` take an ``Options``, or
the same names as keyword arguments, and build it with :meth:`Options.build`; the CLI builds it from its
typed options. The choice options are the str-valued enums below (their values are what ``--help`` lists).
No TensorFlow import here: the CLI imports this module before TensorFlow is quieted.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, ClassVar

from ckptfix.data.preprocessing import PRESETS, check_central_crop, parse_image_size
from ckptfix.data.sources import FORMATS
from ckptfix.errors import CkptfixError, DataError, KeywordError, OptionError
from ckptfix.graph.feeds import input_names
from ckptfix.keras.formats import MODEL_FORMATS
from ckptfix.scaling.devices import parse_devices
from ckptfix.stats import Estimator

__all__ = ["DataFormat", "Estimator", "ModelFormat", "Options", "Preset"]


class _Choice(str, Enum):
    """A str-valued choice that prints as its value (``f"{ModelFormat.KERAS}"`` is ``keras``)."""

    def __str__(self) -> str:
        return self.value


def _choices(name: str, values) -> type[_Choice]:
    # Built from the tuples their modules own, so each list of names has one definition.
    return _Choice(name, [(value.upper().replace("-", "_"), value) for value in values])


#: ``--model-format``: the Keras / TF2 file formats, and ``tf1`` (see :mod:`ckptfix.keras.formats`).
ModelFormat = _choices("ModelFormat", MODEL_FORMATS)
#: ``--format``: the kind of calibration file to use in a folder (see :mod:`ckptfix.data.sources`).
DataFormat = _choices("DataFormat", FORMATS)
#: ``--preprocess`` presets (see :mod:`ckptfix.data.preprocessing`); ``preprocess`` also takes
#: ``"package.module:function"`` or a callable.
Preset = _choices("Preset", PRESETS)


def _choice(enum: type[Enum], value, option: str, error: type[CkptfixError] = OptionError):
    """``value`` as a member of ``enum``; else ``error`` naming the choices."""
    if value is None or isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        raise error(f"{option} must be one of {', '.join(e.value for e in enum)} (got {value}).") from None


def _compile(pattern: str | None, option: str) -> None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as error:
            raise OptionError(f"{option} {pattern!r} is not a valid regular expression ({error}).") from None


def _at_least(value: int | None, minimum: int, option: str) -> None:
    if value is not None and value < minimum:
        raise OptionError(f"{option} must be at least {minimum} (got {value}).")


#: the types each field takes (besides None where its default is None); anything else is an OptionError
_TYPES: dict[str, tuple[type, ...]] = {
    "batch_size": (int,), "num_samples": (int,), "seed": (int,), "agreement_samples": (int,),
    "central_crop": (int, float), "until_stable": (int, float), "shuffle": (bool,), "unsafe": (bool,),
    "strict": (bool,), "overwrite": (bool,),
    "progress": (bool,), "allow_unsafe_ops": (bool,), "force": (bool,), "adapt": (bool,),
    "signature": (str,), "training_flag": (str,), "include": (str,), "exclude": (str,), "output_tensor": (str,),
    "feature": (str,), "model_args": (dict,), "input_shape": (str, tuple, list),
    "image_size": (str, int, tuple, list), "devices": (str, int, tuple, list),
    "input_name": (str, tuple, list), "custom_objects": (dict, str, tuple, list),
    "cluster_timeout": (int, float),
}
_PATHS = ("meta", "architecture", "output", "against", "report", "summary", "plot")


def _check_type(name: str, value) -> None:
    """An OptionError naming the option when ``value`` is not of the field's type (``True`` is no number)."""
    if value is None:
        return
    if name in _PATHS:
        expected: tuple[type, ...] = (str, os.PathLike)
    elif name in _TYPES:
        expected = _TYPES[name]
    else:
        return
    numeric = any(t in (int, float) for t in expected) and bool not in expected
    if not isinstance(value, expected) or (numeric and isinstance(value, bool)):
        names = " or ".join("path" if t is os.PathLike else t.__name__ for t in expected)
        raise OptionError(f"{flag(name)} takes {names}, not {type(value).__name__} ({value!r}).")


#: the command-line flag of each Options field that has one (the API names the keyword instead)
FLAGS: dict[str, str] = {
    "meta": "--meta", "model": "--model", "model_args": "--model-arg/--num-classes", "input_shape": "--input-shape",
    "arg_scope": "--arg-scope", "model_format": "--model-format", "architecture": "--architecture",
    "unsafe": "--unsafe", "signature": "--signature", "training_flag": "--training-flag",
    "batch_size": "--batch-size", "num_samples": "--num-samples", "shuffle": "--shuffle", "seed": "--seed",
    "input_name": "--input", "preprocess": "--preprocess", "image_size": "--image-size",
    "central_crop": "--central-crop", "data_format": "--format", "feature": "--feature", "strict": "--strict",
    "include": "--include", "exclude": "--exclude", "estimator": "--estimator", "output_tensor": "--output-tensor",
    "agreement_samples": "--agreement-samples", "until_stable": "--until-stable",
    "allow_unsafe_ops": "--allow-unsafe-ops", "devices": "--devices",
    "output": "-o/--output", "overwrite": "--overwrite", "against": "--against", "report": "--report",
    "summary": "--summary", "plot": "--plot", "force": "--force", "adapt": "--adapt", "progress": "--progress",
    "custom_objects": "--import", "cluster_timeout": "--cluster-timeout",
}


def flag(name: str) -> str:
    """The command-line flag of field ``name`` (the field's name when it has none)."""
    return FLAGS.get(name, name)


_MODEL = ("meta", "model", "model_args", "input_shape", "arg_scope", "model_format", "architecture", "unsafe",
          "signature", "custom_objects")


@dataclass(frozen=True)
class Options:
    """Everything a run can be told besides CKPT and DATA; the CLI flag is in brackets.

    Model:
        meta: the ``.meta`` graph, when it does not sit beside the prefix [--meta].
        model: ``"package.module:function"`` or a callable (runs your code). For a TF1 checkpoint without a
            ``.meta``: the function that builds its graph, called like slim's nets_factory (see
            :mod:`ckptfix.graph.model_fn`); for a Keras / TF2 file without an architecture: returns the built
            model; for a full-model ``.h5``: builds the architecture, and the file's weights are loaded into it
            (when its saved config cannot be deserialised) [--model].
        custom_objects: the custom classes of a Keras file (custom layers), as Keras' ``custom_objects``:
            a ``{name: class}`` dict, or ``"package.module"`` (imported: the classes it defines or registers)
            / ``"package.module:NAME"`` (a dict of them), or a list of those [--import, repeatable].
        model_args, input_shape, arg_scope: with a graph-building ``model`` only: keyword arguments for it
            (``num_classes`` among them), the per-sample input shape (``"HxWxC"``; default: its
            ``default_image_size``), a slim arg_scope function to build it under [--model-arg/--num-classes,
            --input-shape, --arg-scope].
        model_format: a :class:`ModelFormat` (default: detected from CKPT) [--model-format].
        architecture: a ``.keras`` / config ``.json`` architecture for Keras files without one [--architecture].
        unsafe: turn Keras' safe mode off (Lambda layers run Python stored in the file) [--unsafe].
        signature: the SavedModel signature measured (default ``serving_default``); given, the SavedModel is
            repaired at graph level even when it keeps a Keras model (:mod:`ckptfix.sources.saved_model`)
            [--signature].
        training_flag: the boolean training-flag tensor, fed False (default: detected) [--training-flag].
    Data:
        until_stable: stop reading data once every layer's worst-channel standard errors (mean in units of
            sqrt(var + eps), relative for var + eps) are below this (e.g. 0.01), checked after each batch from
            16 batches on (:mod:`ckptfix.stats.stopping`); default: read all the data [--until-stable].
        batch_size (>= 1; default: the fixed batch size of the graph's input when it has one, as in training,
            else 32), num_samples (>= 1; default all), shuffle, seed: how calibration batches are drawn.
        input_name: the tensor(s) batches are fed to (default: detected), normalised to a tuple of names from
            one name, ``"a,b"``, or a list of either. Without it, every input candidate is fed when the data
            keys an array by each one's name (``.npz`` members, dict keys) [--input].
        preprocess: a :class:`Preset`, ``"package.module:function"`` or a callable (runs your code) applied
            to decoded images and to integer arrays of 0..255 images; float arrays are used as given. Default:
            what the model says (:mod:`ckptfix.data.conventions`: its first layers, its name, a uint8 input, a
            tf-slim network's scope); images for a model that says nothing are a usage error [--preprocess].
        image_size, central_crop: ``"HxW"`` / ``(H, W)`` images are resized to when the input has no static
            size; the central fraction of each side kept before resizing [--image-size, --central-crop].
        data_format: a :class:`DataFormat`, for a folder mixing kinds [--format].
        feature: the TFRecord feature holding the encoded image or raw float sample [--feature].
        strict: an unreadable file is an error instead of being skipped [--strict].
    Statistics:
        include, exclude: regexes (``re.search``) over BN layer scope names; unselected layers keep their
            bytes and run as saved [--include, --exclude].
        estimator: an :class:`Estimator`: ``pooled`` (exact statistics of all values) or ``batch-mean``
            (mean of per-batch ones) [--estimator].
        output_tensor: the output compared in the agreement check (default: detected logits; a Keras model:
            one of its output names, default all of them) [--output-tensor].
        agreement_samples: how many of the first samples the agreement check uses (>= 0) [--agreement-samples].
    Execution:
        devices: where whole batches run (docs/scaling-out.md): ``"all"`` (every visible GPU, else the CPU),
            a count (the first that many), or names (``"/GPU:0,/GPU:1"``, or a list); default: all. The
            statistics equal the one-device run's to float64 rounding. Under a ``TF_CONFIG`` cluster each
            process is one worker and these are its local devices [--devices].
        cluster_timeout: under a ``TF_CONFIG`` cluster, how long (seconds, > 0) a worker waits for the others: for
            every task to register at start-up (a worker that never starts is then an error naming it, nothing
            written), and for their statistics at the end; default: ``CKPTFIX_WORKER_TIMEOUT``, else 3600
            (docs/scaling-out.md) [--cluster-timeout].
    Safety:
        allow_unsafe_ops: run a forward pass containing ops that execute Python or write files
            (:mod:`ckptfix.graph.safety`); only for graphs you trust [--allow-unsafe-ops].
    Output:
        output: recalibrate's destination: a folder (default ``<checkpoint folder>-recalibrated``); for a frozen
            graph or a Keras ``.keras`` / ``.h5`` / ``.weights.h5`` file, a file (default
            ``<name>-recalibrated.<ext>`` beside it; a frozen graph's suffix picks binary or text) [-o].
        overwrite: replace an existing output: a folder only when it holds a model ckptfix writes and nothing
            else (:func:`ckptfix.io.atomic.foreign_content`), a file only when it is a model file of that kind;
            and existing ``report`` / ``summary`` / ``plot`` files (GitHub's step summary is appended to, never
            replaced: :mod:`ckptfix.io.outputs`) [--overwrite].
        against: inspect and diagnose: another checkpoint (e.g. the pretrained one) whose identical statistics
            are flagged; in ``diagnose`` they are evidence of staleness [--against].
        report, summary, plot: side outputs written after the run (atomically, only when it succeeds): the JSON
            report, a Markdown summary, a picture in any format matplotlib writes, by extension (``.png``,
            ``.pdf``, ``.svg``...). Checked with the other paths before any work (:mod:`ckptfix.io.outputs`)
            [--report, --summary, --plot].
        force: write statistics the repair gate refuses (:mod:`ckptfix.diagnostics.gate`) [--force].
        adapt: also recompute BN layers that were frozen while training (Keras ``trainable=False``, slim
            ``is_training=False`` inside a training graph): their stored statistics are what the weights were
            trained against, so recomputing them adapts the model to this data (domain adaptation) rather than
            repairing it; without it they are left as stored [--adapt].
        progress: the calibration pass's progress on stderr: a tqdm bar on a terminal, plain lines otherwise
            [--progress]. on_notice: called with each one-line notice. Both also go to the ``ckptfix`` and
            ``ckptfix.progress`` loggers (:mod:`ckptfix.log`), with or without these.

    Which command takes which: ``recalibrate`` all but ``against``; ``diagnose`` all but ``output`` and
    ``force`` (its ``overwrite`` is for the side outputs); ``inspect`` only the model options and ``against``.
    """

    meta: Path | None = None
    model: str | Callable | None = None
    model_args: dict | None = None
    input_shape: str | tuple | None = None
    arg_scope: str | Callable | None = None
    model_format: ModelFormat | None = None
    custom_objects: dict | str | tuple[str, ...] | None = None
    architecture: Path | None = None
    unsafe: bool = False
    signature: str | None = None
    training_flag: str | None = None
    batch_size: int | None = None
    num_samples: int | None = None
    until_stable: float | None = None
    shuffle: bool = True
    seed: int = 0
    input_name: tuple[str, ...] | None = None
    preprocess: Preset | str | Callable | None = None
    image_size: str | tuple[int, int] | None = None
    central_crop: float | None = None
    data_format: DataFormat | None = None
    feature: str = "image/encoded"
    strict: bool = False
    include: str | None = None
    exclude: str | None = None
    estimator: Estimator = "pooled"
    output_tensor: str | None = None
    agreement_samples: int = 256
    allow_unsafe_ops: bool = False
    devices: str | int | tuple[str, ...] | None = None
    cluster_timeout: float | None = None
    output: Path | None = None
    overwrite: bool = False
    against: Path | None = None
    report: Path | None = None
    summary: Path | None = None
    plot: Path | None = None
    force: bool = False
    adapt: bool = False
    progress: bool = False
    on_notice: Callable[[str], None] | None = None

    #: the fields each command takes (see the class docstring)
    COMMANDS: ClassVar[dict[str, frozenset[str]]] = {}

    def __post_init__(self) -> None:
        def normalise(name: str, value) -> None:
            object.__setattr__(self, name, value)

        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name))

        normalise("estimator", _choice(Estimator, self.estimator, "--estimator"))
        normalise("model_format", _choice(ModelFormat, self.model_format, "--model-format"))
        normalise("data_format", _choice(DataFormat, self.data_format, "--format", DataError))
        if isinstance(self.preprocess, str) and ":" not in self.preprocess:
            normalise("preprocess", _choice(Preset, self.preprocess, "--preprocess"))
        _at_least(self.batch_size, 1, "--batch-size")
        _at_least(self.num_samples, 1, "--num-samples")
        _at_least(self.agreement_samples, 0, "--agreement-samples")
        _at_least(self.seed, 0, "--seed")  # numpy's generators take non-negative seeds
        check_central_crop(self.central_crop)
        if self.image_size is not None:
            normalise("image_size", parse_image_size(self.image_size))
        if self.until_stable is not None and not 0 < self.until_stable < 1:
            raise OptionError(f"--until-stable must be between 0 and 1, e.g. 0.01 (got {self.until_stable}).")
        _compile(self.include, "--include")
        _compile(self.exclude, "--exclude")
        if isinstance(self.custom_objects, (list, str)):
            normalise("custom_objects", tuple([self.custom_objects] if isinstance(self.custom_objects, str) else self.custom_objects))
        names = input_names(self.input_name)
        normalise("input_name", None if names is None else tuple(names))
        normalise("devices", parse_devices(self.devices))
        if self.cluster_timeout is not None and not 0 < self.cluster_timeout < float("inf"):
            raise OptionError(f"--cluster-timeout must be a number of seconds above 0 (got {self.cluster_timeout}).")
        if self.model is None and any((self.model_args, self.input_shape, self.arg_scope)):
            raise OptionError("--num-classes, --model-arg, --input-shape and --arg-scope apply only with --model.")
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                normalise(name, Path(value))

    @classmethod
    def build(cls, options: Options | None, keywords: dict[str, Any], command: str) -> Options:
        """``options`` with ``keywords`` applied, for ``command`` (``recalibrate``, ``diagnose``, ``inspect``).

        A keyword the command does not take is a TypeError, as in any Python call. An ``options`` object is
        taken whole: one Options can serve several commands, each reading the fields it takes.
        """
        taken = cls.COMMANDS[command]
        for name in keywords:
            if name not in taken:
                raise KeywordError(f"{command}() got an unexpected keyword argument {name!r} "
                                  f"(it takes {', '.join(sorted(taken - {'on_notice'}))}).")
        if options is None:
            return cls(**keywords)
        if not isinstance(options, cls):
            raise KeywordError(f"{command}() options must be a ckptfix.options.Options, not {type(options).__name__}.")
        return dataclasses.replace(options, **keywords) if keywords else options

    @property
    def data_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`ckptfix.data.open_calibration_data` that come from the user as is."""
        return dict(image_size=self.image_size, central_crop=self.central_crop, data_format=self.data_format,
                    feature=self.feature, strict=self.strict)

    def tf1_only(self) -> list[str]:
        """The flags set that apply only to TF1 graphs (a Keras model is called with ``training=False``)."""
        flags = {
            "--training-flag": self.training_flag,
            "--allow-unsafe-ops": self.allow_unsafe_ops, "--model-arg/--num-classes": self.model_args,
            "--input-shape": self.input_shape, "--arg-scope": self.arg_scope,
        }
        return [flag for flag, value in flags.items() if value]


_ALL = frozenset(f.name for f in dataclasses.fields(Options))
Options.COMMANDS.update(
    recalibrate=_ALL - {"against"},
    diagnose=_ALL - {"output", "force"},
    inspect=frozenset({*_MODEL, "against"}),
)
