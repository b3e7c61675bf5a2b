"""The one entry point, :func:`open_calibration_data`: DATA (a path or a Python object) -> forward batches.

Paths: a file, or a folder searched recursively (sorted, hidden files and folders skipped), holding one kind
of data -- images (``.jpg .jpeg .png .bmp .gif``), numpy (``.npy .npz``) or TFRecords (``.tfrecord
.tfrecords``, optionally ``.gz``, GZIP also recognised by content). A folder mixing kinds is an error unless
``format`` picks one. Other files (labels, READMEs) are ignored.

Order: without shuffling, files in sorted path order and array rows in order. With shuffling (seeded by
``seed``, the same seed giving the same batches): arrays are read in a permutation of all rows (random
access by positioned reads), image files in a permutation of the file list, TFRecord files in a permutation
of the file list with records mixed in a buffer that holds them all when they fit (:func:`~ckptfix.data.tfrecord.shuffle_buffer`).
``num_samples`` stops reading once that many samples were batched.

Shares (``share=(index, count)``, a ``TF_CONFIG`` worker's; :class:`~ckptfix.data.batching.Share`): files,
array rows and TFRecord records are assigned to batches by their position in the order above (bounded by
``num_samples`` positions) before anything is read, and only the share's positions are read and decoded; a
``tf.data.Dataset`` or an iterable is read whole and the other batches dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ckptfix.data.arrays import indexed_chunks, open_array_files, read_npz
from ckptfix.data.batching import (Batch, Chunk, Rebatcher, Share, SkipLog, assigned_batches, merged_rest,
                                   with_batches)
from ckptfix.data.images import array_image_chunks, image_chunks
from ckptfix.data.preprocessing import parse_image_size, resolve_preprocessing
from ckptfix.data.python import dataset_chunks, features, in_memory, inputs_of, iterable_chunks
from ckptfix.data.spec import InputSpec
from ckptfix.data.tfrecord import feature_kind, record_chunks, scan, shuffle_buffer
from ckptfix.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})
ARRAY_SUFFIXES = frozenset({".npy", ".npz"})
TFRECORD_SUFFIXES = frozenset({".tfrecord", ".tfrecords"})
FORMATS = ("images", "numpy", "tfrecord")


def kind_of(path: Path) -> str | None:
    """``images``, ``numpy``, ``tfrecord`` or None (ignored) from a file's name."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[: -len(".gz")]
    suffix = Path(name).suffix
    if suffix in IMAGE_SUFFIXES and not path.name.lower().endswith(".gz"):
        return "images"
    if suffix in ARRAY_SUFFIXES and not path.name.lower().endswith(".gz"):
        return "numpy"
    if suffix in TFRECORD_SUFFIXES:
        return "tfrecord"
    return None


_MODEL_MARKERS = ("checkpoint", "saved_model.pb", "saved_model.pbtxt")
_MODEL_SUFFIXES = (".index", ".meta", ".keras", ".h5", ".pb", ".pbtxt")


def calibration_files_in(path: str | Path, look_at: int = 200) -> str | None:
    """What calibration data ``path`` holds (``"images such as a/00000.png"``) when it holds such data and no
    model file, else None: a file of a data kind, or a folder whose first ``look_at`` entries (its own, then its
    subfolders', as in a folder of class folders) are data files beside no checkpoint, SavedModel or Keras file.
    For a CKPT argument: DATA given in its place means the two arguments were swapped."""
    path = Path(path)
    if path.is_file():
        kind = kind_of(path)
        return kind
    if not path.is_dir():
        return None
    seen: list[Path] = []
    folders = [path]
    while folders and len(seen) < look_at:
        folder = folders.pop(0)
        try:
            entries = sorted(itertools.islice(folder.iterdir(), look_at))
        except OSError:
            continue
        for entry in entries:
            if entry.name in _MODEL_MARKERS or entry.suffix in _MODEL_SUFFIXES:
                return None
            (folders if entry.is_dir() and folder == path else seen).append(entry)
    found = [entry for entry in seen if kind_of(entry) is not None]
    return f"{kind_of(found[0])} such as {found[0].relative_to(path)}" if found else None


def collect_files(path: Path, data_format: str | None) -> tuple[str, list[Path]]:
    """The kind and sorted files of DATA; errors name what was found and the fix."""
    if data_format is not None and data_format not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)} (got {data_format}).")
    if not path.exists():
        raise DataError(f"calibration data {path} does not exist: pass a folder or file of calibration samples.")
    if path.is_file():
        files = [path]
    else:
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    by_kind: dict[str, list[Path]] = {}
    for f in files:
        kind = kind_of(f)
        if kind is not None:
            by_kind.setdefault(kind, []).append(f)
    if data_format is not None:
        if data_format not in by_kind:
            found = ", ".join(sorted(by_kind)) or "nothing usable"
            raise DataError(f"no {data_format} files in {path} (found: {found}).")
        return data_format, by_kind[data_format]
    if not by_kind:
        kinds = ", ".join(sorted({p.suffix or p.name for p in files})) or "no files"
        raise DataError(
            f"no calibration samples in {path} (found: {kinds}); use images (.jpg .png .bmp .gif), "
            "arrays (.npy .npz) or TFRecords (.tfrecord)."
        )
    if len(by_kind) > 1:
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
        raise DataError(f"{path} mixes kinds of data ({counts}): pass --format {'|'.join(FORMATS)} to pick one.")
    kind = next(iter(by_kind))
    return kind, by_kind[kind]


class CalibrationBatches:
    """Forward batches: arrays for a one-input model, dicts keyed by input name for several inputs.

    ``num_samples`` is the expected count (for a progress bar; None when unknown). After iterating,
    ``skipped_files`` / ``samples_skipped`` tell what was skipped, ``merged_last`` whether a too-small last
    batch was merged ``(its size, the merged size)``, and :meth:`describe_last` names the last batch.
    ``preprocessing`` describes what image files, or integer arrays taken as images (``integer_images``), went
    through; None for data used as given. Only the batches of ``share`` are yielded (numbered in the whole
    data); ``assigned``: the chunks are already the share's, their samples carrying their batch, and
    ``merged_last`` is the layout's. ``random_order``: the samples come in a uniformly random order (files and
    arrays shuffled, TFRecords whose records all fit the shuffle buffer), so any first part of the stream is a
    random sample of the data; False for the caller's own order (datasets, iterables, ``shuffle=False``).
    ``finite``: the data is known to end (files, arrays, sized iterables, datasets of known cardinality).
    """

    def __init__(
        self,
        chunks: Callable[[], Iterator[Chunk]],
        *,
        inputs: Sequence[InputSpec],
        batch_size: int,
        num_samples: int | None,
        expected: int | None,
        fixed: bool,
        source: str,
        skips: SkipLog,
        preprocessing: str | None = None,
        integer_images: bool = False,
        share: Share = Share(),
        assigned: tuple[int, int] | None = None,
        random_order: bool = False,
        finite: bool = True,
    ) -> None:
        self._chunks = chunks
        self.random_order, self.finite = random_order, finite
        self._rebatcher = Rebatcher(batch_size, num_samples, fixed)
        self.share = share
        self._assigned = assigned  # (samples laid out, batch size)
        self.inputs = list(inputs)
        self.num_samples = expected
        self.source = source
        self.skips = skips
        self.preprocessing = preprocessing
        self.integer_images = integer_images
        self.last: Batch | None = None

    @property
    def images(self) -> bool:
        return self.preprocessing is not None

    @property
    def description(self) -> str:
        return self.source

    @property
    def skipped_files(self) -> list[str]:
        return list(self.skips.skipped)

    @property
    def samples_skipped(self) -> int:
        return self.skips.count

    @property
    def merged_last(self) -> tuple[int, int] | None:
        return merged_rest(*self._assigned) if self._assigned else self._rebatcher.merged

    def describe_last(self) -> str:
        return "no batch yet" if self.last is None else self.last.describe()

    def batches(self) -> Iterator[Batch]:
        """The :class:`Batch` objects of the share (values per input and a name per sample)."""
        seen = 0
        produced = assigned_batches(self._chunks()) if self._assigned else self._rebatcher(self._chunks())
        for batch in produced:
            seen += len(batch)
            self.skips.release()
            if self.share.owns(batch.index):
                self.last = batch
                yield batch
        if seen == 0 and not self._assigned:  # a share may be empty: the run checks the whole
            if self.skips.skipped:
                raise DataError(
                    f"no usable sample in {self.source}: all {len(self.skips.skipped)} file(s) were skipped "
                    f"(first: {self.skips.skipped[0]}: {self.skips.first_reason})."
                )
            raise DataError(f"{self.source} yielded no samples: pass data with at least one sample.")
        self.skips.release()
        self.skips.finish()

    def __iter__(self):
        single = len(self.inputs) == 1
        for batch in self.batches():
            yield batch.values[self.inputs[0].name] if single else batch.values


class DataKeys:
    """The names ``data`` keys its arrays by (``.npz`` members, dict keys), read only when asked for.

    :meth:`keys` looks at the first ``.npz`` file of a path, a dict, a ``tf.data.Dataset``'s element spec, or
    the first element of an iterable (``(inputs, labels)`` pairs included); None when the data names nothing
    (arrays, ``.npy``, images). Read the batches from :attr:`data` afterwards: a one-shot iterator gets its
    peeked element put back in front.
    """

    def __init__(self, data, data_format: str | None = None) -> None:
        self.data = data
        self._format = data_format

    @staticmethod
    def _of(element) -> list[str] | None:
        element = features(element)  # (inputs, labels[, sample_weights])
        return [str(key) for key in element] if isinstance(element, dict) else None

    def keys(self) -> list[str] | None:
        data = self.data
        if isinstance(data, np.ndarray):
            return None
        if isinstance(data, dict):
            return self._of(data)
        if isinstance(data, (str, Path)):
            kind, files = collect_files(Path(data).expanduser(), self._format)
            npz = [f for f in files if f.suffix.lower() == ".npz"] if kind == "numpy" else []
            return list(read_npz(npz[0])) if npz else None
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            return self._of(data.element_spec)
        if not hasattr(data, "__iter__"):
            return None
        iterator = iter(data)
        first = next(iterator, None)
        if iterator is data and first is not None:  # one-shot: put the element back
            self.data = itertools.chain([first], iterator)
        return None if first is None else self._of(first)


def _order(count: int, shuffle: bool, seed: int, num_samples: int | None) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
    return order[:num_samples] if num_samples is not None else order


def _integer_images(integer: Callable[[str], bool], inputs: Sequence[InputSpec], preprocess, image_size,
                    central_crop) -> dict:
    """Input name -> :class:`ImagePreprocessing` for the inputs fed integers that are images: a float input shaped
    ``(N, H, W, 1 or 3)`` whose data ``integer(name)`` says is of an integer dtype. Integer inputs (token ids, a
    model taking uint8) get their data as given. The same rule for every data source (arrays, ``.npy``/``.npz``,
    ``tf.data``, iterables, int64 TFRecord features): the dtype decides, not where the data came from."""
    preps = {}
    for spec in inputs:
        shape = spec.shape
        image_like = shape is not None and len(shape) == 4 and shape[-1] in (1, 3)
        if image_like and np.issubdtype(spec.dtype, np.floating) and integer(spec.name):
            preps[spec.name] = resolve_preprocessing(preprocess, shape, image_size, central_crop)
    return preps


def _read_specs(inputs: Sequence[InputSpec], preps: dict) -> list[InputSpec]:
    """The inputs as the data is read: the integer-image ones as int64 (preprocessed afterwards)."""
    return [dataclasses.replace(s, dtype=np.dtype(np.int64)) if s.name in preps else s for s in inputs]


def _first_batch_dtypes(data, inputs: Sequence[InputSpec]) -> tuple[object, dict[str, np.dtype]]:
    """(``data`` with its first item put back if it is a one-shot iterator, input name -> that item's dtype)."""
    iterator = iter(data)
    first = next(iterator, None)
    if iterator is data and first is not None:
        data = itertools.chain([first], iterator)
    if first is None:
        return data, {}
    values = inputs_of(first, inputs, "given batch 0")
    return data, {name: np.asarray(value).dtype for name, value in values.items()}


def _dataset_dtypes(dataset, inputs: Sequence[InputSpec]) -> dict[str, np.dtype]:
    """Input name -> the dtype a ``tf.data.Dataset``'s elements give it (from its element spec)."""
    spec = dataset.element_spec
    part = features(spec)
    try:
        picked = inputs_of(part, inputs, "the dataset's elements")
    except DataError:
        return {}  # named wrongly: the read reports it
    return {name: np.dtype(component.dtype.as_numpy_dtype) for name, component in picked.items()
            if hasattr(component, "dtype")}


def open_calibration_data(
    data,
    *,
    input_name: str | None = None,
    input_shape: tuple | None = None,
    dtype: np.dtype | None = None,
    inputs: Sequence[InputSpec] | None = None,
    batch_size: int,
    num_samples: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    share: tuple[int, int] = (0, 1),
    preprocess="inception",
    image_size=None,
    central_crop: float | None = None,
    data_format: str | None = None,
    feature: str = "image/encoded",
    strict: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> CalibrationBatches:
    """Calibration batches for ``data``, shaped for the model's input(s).

    ``data``: a path (see the module docstring), a numpy array (or a dict of arrays, one per input), a
    ``tf.data.Dataset`` or an iterable of batches. The model's inputs are ``inputs``, or the single
    ``input_name`` / ``input_shape`` / ``dtype``. Images are preprocessed with ``preprocess`` (a preset
    name, ``module:function`` or a callable, see :mod:`ckptfix.data.preprocessing`) at the input's size or
    ``image_size``. Files that cannot be decoded are skipped with ``on_warning(message)`` (an error with
    ``strict``). Nothing is read until the result is iterated, except file headers and TFRecord framing.
    ``share=(index, count)``: only batches i with i mod count == index are read (see the module docstring).
    """
    if inputs is None:
        if input_name is None:
            raise TypeError("open_calibration_data needs inputs= or input_name=")
        inputs = [InputSpec(input_name, input_shape, np.dtype(dtype or np.float32))]
    inputs = list(inputs)
    dtypes = {spec.name: spec.dtype for spec in inputs}
    skips = SkipLog(strict=strict, warn=on_warning or (lambda message: None))
    shared = Share(*share)
    common = dict(inputs=inputs, batch_size=batch_size, num_samples=num_samples, skips=skips, share=shared)
    shuffled = dict(common, random_order=shuffle)
    bounded = (lambda n: n if num_samples is None else min(n, num_samples))

    size = parse_image_size(image_size)

    def integer_images(integer: Callable[[str], bool]) -> dict:
        return _integer_images(integer, inputs, preprocess, size, central_crop)

    def preprocessed(chunks: Callable[[], Iterator[Chunk]], preps: dict) -> Callable[[], Iterator[Chunk]]:
        """``chunks`` with the integer-image inputs (``preps``) preprocessed like decoded image files."""
        return (lambda: array_image_chunks(chunks(), preps, inputs)) if preps else chunks

    def described(preps: dict) -> dict:
        description = next(iter(preps.values())).description if preps else None
        return dict(preprocessing=description, integer_images=bool(preps))

    def array_batches(arrays, source: str) -> CalibrationBatches:
        """Numpy rows in batches; integer arrays that are images preprocessed (:func:`_integer_images`)."""
        preps = integer_images(arrays.integer)
        order = _order(len(arrays), shuffle, seed, num_samples)
        read = {spec.name: spec.dtype for spec in _read_specs(inputs, preps)}
        if shared.count == 1:
            chunks = preprocessed(lambda: indexed_chunks(arrays, order, batch_size, read), preps)
            return CalibrationBatches(chunks, expected=len(order), fixed=True, source=source, **described(preps),
                                      **shuffled)
        positions, batches = shared.positions(len(order), batch_size)
        rows = lambda: with_batches(indexed_chunks(arrays, order[positions], batch_size, read), batches)  # noqa: E731
        return CalibrationBatches(preprocessed(rows, preps), expected=len(positions), fixed=True, source=source,
                                  assigned=(len(order), batch_size), **described(preps), **shuffled)

    def is_integer(dtypes: dict[str, np.dtype]) -> Callable[[str], bool]:
        return lambda name: name in dtypes and np.issubdtype(dtypes[name], np.integer)

    if isinstance(data, (np.ndarray, dict)):  # a dict: one array per input
        return array_batches(in_memory(data, inputs), "the given array")
    if not isinstance(data, (str, Path)):
        try:
            import tensorflow as tf

            is_dataset = isinstance(data, tf.data.Dataset)
        except ImportError:  # pragma: no cover
            is_dataset = False
        if is_dataset:
            preps = integer_images(is_integer(_dataset_dtypes(data, inputs)))
            chunks, samples = dataset_chunks(data, _read_specs(inputs, preps), batch_size)
            return CalibrationBatches(preprocessed(chunks, preps), expected=num_samples, fixed=samples,
                                      source="the given tf.data.Dataset", finite=int(data.cardinality()) >= 0,
                                      **described(preps), **common)
        if not hasattr(data, "__iter__"):
            raise DataError(f"calibration data of type {type(data).__name__}: pass a path, an array, a tf.data.Dataset or batches.")
        sized = hasattr(data, "__len__")
        data, dtypes = _first_batch_dtypes(data, inputs)
        preps = integer_images(is_integer(dtypes))
        chunks = iterable_chunks(data, _read_specs(inputs, preps))
        return CalibrationBatches(preprocessed(chunks, preps), expected=num_samples, fixed=False,
                                  source="the given batches", finite=sized, **described(preps), **common)

    path = Path(data).expanduser()
    kind, files = collect_files(path, data_format)
    where = str(path)
    if kind == "numpy":
        arrays = open_array_files(files, inputs)
        return array_batches(arrays, f"{len(arrays)} samples in {len(files)} numpy file(s) in {where}")
    if len(inputs) > 1:
        raise DataError(f"a model with several inputs takes .npz files or Python batches, not {kind} ({where}).")
    spec = inputs[0]
    if kind == "images":
        prep = resolve_preprocessing(preprocess, spec.shape, size, central_crop)
        ordered = [files[i] for i in _order(len(files), shuffle, seed, None)]
        source = f"{len(files)} image file(s) in {where}"
        if shared.count == 1:
            chunks = lambda: image_chunks(ordered, prep, spec, skips, batch_size)  # noqa: E731
            return CalibrationBatches(chunks, expected=bounded(len(files)), fixed=True, source=source,
                                      preprocessing=prep.description, **shuffled)
        positions, batches = shared.positions(bounded(len(files)), batch_size)
        mine = [ordered[p] for p in positions]
        chunks = lambda: image_chunks(mine, prep, spec, skips, batch_size, batches)  # noqa: E731
        return CalibrationBatches(chunks, expected=len(mine), fixed=True, source=source, preprocessing=prep.description,
                                  assigned=(bounded(len(files)), batch_size), **shuffled)
    scanned = [scan(f) for f in files]
    ordered = [scanned[i] for i in _order(len(scanned), shuffle, seed, None)]
    record_kind = feature_kind(ordered, feature)
    prep = resolve_preprocessing(preprocess, spec.shape, size, central_crop) if record_kind == "image" else None
    preps = integer_images(lambda name: record_kind == "int64")
    read_spec = _read_specs(inputs, preps)[0]
    total = sum(f.records for f in scanned)
    layout = None if shared.count == 1 else (bounded(total), batch_size)
    chunks = lambda: record_chunks(ordered, feature, record_kind, prep, read_spec, skips, batch_size, shuffle, seed,  # noqa: E731
                                   shared, layout)
    source = f"{total} records in {len(files)} TFRecord file(s) in {where} (feature {feature})"
    images = described(preps) if preps else dict(preprocessing=None if prep is None else prep.description)
    expected = bounded(total) if layout is None else len(shared.positions(*layout)[0])
    return CalibrationBatches(preprocessed(chunks, preps), expected=expected, fixed=True, source=source,
                              assigned=layout, **images, **common,
                              random_order=shuffle and total <= shuffle_buffer(scanned))
