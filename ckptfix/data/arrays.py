"""Numpy calibration data: ``.npy`` files, uncompressed ``.npz`` archives and in-memory arrays.

Float arrays are taken as already preprocessed and cast to the input's dtype. Integer arrays feeding a float
input shaped ``(N, H, W, 1 or 3)`` are 8-bit images in practice: :func:`~ckptfix.data.sources.open_calibration_data`
runs them through ``--preprocess`` like decoded image files (``raw`` uses the values as given). A file holds either ``(N, ...)``
samples or one sample (its shape is the input's sample shape). Files are never loaded whole: only their
headers are read when the data is opened, and each batch reads its rows from the file (or the ``.npz``
member, stored uncompressed at a fixed offset in the zip) with ``os.preadv`` straight into the batch array,
one read per run of consecutive rows, so resident memory stays at one batch whatever the data size.
Compressed ``.npz`` members cannot be read at an offset and are refused.

Why not memory maps: on kernels whose page cache holds large folios (ext4 and XFS on Linux 6.x), a page
fault in a mapping maps the whole folio around it (up to 2 MB), so reading 32 random rows of 48 kB through a
map put up to 64 MB of file pages in the process's resident set; with more data (more distinct folios) the
peak grew with the file size. ``preadv`` copies only the rows. Fortran-ordered arrays, whose rows are not
contiguous, are still read through a short-lived map.

A multi-input model takes a ``.npz`` with one array per input, named after the input (``images``,
``images:0`` or the scope's last component).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ckptfix.data.batching import Chunk
from ckptfix.data.spec import InputSpec, check_sample_shape, key_for_input, keys_for_inputs
from ckptfix.errors import DataError


@dataclass(frozen=True)
class StoredArray:
    """An array inside a file at ``offset``: mapped on demand. ``single``: the file is one sample."""

    path: Path
    offset: int
    shape: tuple
    dtype: np.dtype
    fortran_order: bool
    single: bool = False

    def __len__(self) -> int:
        return 1 if self.single else self.shape[0]

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (any order) as a new array; a one-sample file gives that sample with a batch axis."""
        if self.fortran_order and len(self.shape) > 1 or not hasattr(os, "preadv"):
            return self._mapped_rows(indices)
        sample_shape = self.shape if self.single else self.shape[1:]
        out = np.empty((1 if self.single else len(indices), *sample_shape), self.dtype)
        row_bytes = out[0].nbytes if len(out) else 0
        indices = np.zeros(1, np.int64) if self.single else np.asarray(indices, np.int64)
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1  # runs of consecutive rows: one read each
        with open(self.path, "rb", buffering=0) as handle:
            for start, stop in zip([0, *breaks], [*breaks, len(indices)]):
                self._read_into(handle.fileno(), out[start:stop], self.offset + int(indices[start]) * row_bytes)
        return out

    def _read_into(self, fd: int, target: np.ndarray, position: int) -> None:
        view = memoryview(target).cast("B")
        while len(view):
            count = os.preadv(fd, [view], position)
            if count == 0:
                raise DataError(f"{self.path} ends before its array does (truncated?): re-save it.")
            view, position = view[count:], position + count

    def _mapped_rows(self, indices: np.ndarray) -> np.ndarray:
        mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape, "F" if self.fortran_order else "C")
        try:
            return np.array(mapped[None]) if self.single else np.asarray(mapped[indices])  # fancy index: a copy
        finally:
            mapped._mmap.close()
            del mapped


def _header(handle, label: str) -> tuple[tuple, np.dtype, bool]:
    try:
        version = np.lib.format.read_magic(handle)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran_order, dtype = reader(handle)
    except ValueError as error:
        raise DataError(f"cannot read {label}: {error}; pass a valid .npy/.npz file.") from None
    if dtype.hasobject:
        raise DataError(f"{label} holds Python objects, not numbers: save it as a numeric array.")
    return shape, dtype, fortran_order


def read_npy(path: Path) -> StoredArray:
    """Header of a ``.npy`` file."""
    try:
        with open(path, "rb") as handle:
            shape, dtype, fortran = _header(handle, str(path))
            return StoredArray(path, handle.tell(), shape, dtype, fortran)
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}.") from None


def read_npz(path: Path) -> dict[str, StoredArray]:
    """Headers of the members of an uncompressed ``.npz`` (key -> array)."""
    members = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                if info.compress_type != zipfile.ZIP_STORED:
                    raise DataError(
                        f"{path} is compressed (np.savez_compressed) and cannot be memory-mapped: "
                        "re-save it with np.savez or as .npy files."
                    )
                raw.seek(info.header_offset + 26)
                name_length, extra_length = np.frombuffer(raw.read(4), "<u2")
                start = info.header_offset + 30 + int(name_length) + int(extra_length)
                raw.seek(start)
                shape, dtype, fortran = _header(raw, f"{path}[{key}]")
                members[key] = StoredArray(path, raw.tell(), shape, dtype, fortran)
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"cannot read {path}: {error}; pass a valid .npz file.") from None
    if not members:
        raise DataError(f"{path} holds no arrays.")
    return members


def _pick(members: dict[str, StoredArray], spec: InputSpec, path: Path) -> StoredArray:
    """The array for a one-input model: the one named after the input, or the only one."""
    key = key_for_input(list(members), spec.name, spec.aliases)
    if key is None and len(members) == 1:
        key = next(iter(members))
    if key is None:
        raise DataError(f"{path} holds arrays {', '.join(members)}: name one after the input {spec.name}, or keep only one.")
    return members[key]


class ArraySet:
    """Every sample of every file, per input, addressable by a global sample index."""

    def __init__(self, columns: dict[str, list[StoredArray]], labels: list[str]) -> None:
        self.columns = columns
        self.labels = labels  # per file
        first = next(iter(columns.values()))
        self.starts = np.cumsum([0] + [len(a) for a in first])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def integer(self, name: str) -> bool:
        """Are all the arrays for input ``name`` of an integer dtype?"""
        return all(np.issubdtype(stored.dtype, np.integer) for stored in self.columns[name])

    def take(self, indices: np.ndarray, dtypes: dict[str, np.dtype]) -> Chunk:
        """Rows ``indices`` (any order) of every input, cast to ``dtypes``, named ``file[row]``."""
        which = np.searchsorted(self.starts, indices, side="right") - 1
        local = indices - self.starts[which]
        values = {}
        for name, arrays in self.columns.items():
            out = None
            for k in np.unique(which):
                picked = which == k
                rows = arrays[k].rows(local[picked])
                if out is None:
                    out = np.empty((len(indices), *rows.shape[1:]), dtypes[name])
                out[picked] = rows
            values[name] = out
        names = [
            self.labels[k] if self.columns[next(iter(self.columns))][k].single else f"{self.labels[k]}[{i}]"
            for k, i in zip(which, local)
        ]
        return Chunk(values, names)


def open_array_files(files: Sequence[Path], inputs: Sequence[InputSpec]) -> ArraySet:
    """Headers of ``files`` checked against the inputs: shapes, one array per input, equal lengths."""
    several = len(inputs) > 1
    columns: dict[str, list[StoredArray]] = {spec.name: [] for spec in inputs}
    for path in files:
        if path.suffix.lower() == ".npy":
            if several:
                raise DataError(f"{path}: a model with several inputs takes .npz files with one array per input.")
            found = {inputs[0].name: read_npy(path)}
        else:
            members = read_npz(path)
            if several:
                found = {name: members[key] for name, key in keys_for_inputs(members, inputs, str(path)).items()}
            else:
                found = {inputs[0].name: _pick(members, inputs[0], path)}
        lengths = set()
        for spec in inputs:
            stored = found[spec.name]
            sample_rank = None if spec.shape is None else len(spec.shape) - 1
            if sample_rank is not None and len(stored.shape) == sample_rank:
                stored = StoredArray(stored.path, stored.offset, stored.shape, stored.dtype, stored.fortran_order, True)
                check_sample_shape(stored.shape, spec, str(path))
            else:
                if not stored.shape:
                    raise DataError(f"{path} holds a scalar, not samples shaped like the input {spec.name}.")
                check_sample_shape(stored.shape[1:], spec, str(path))
            lengths.add(len(stored))
            columns[spec.name].append(stored)
        if len(lengths) > 1:
            raise DataError(f"{path}: the arrays for the model's inputs have different lengths ({sorted(lengths)}).")
    arrays = ArraySet(columns, [str(p) for p in files])
    if len(arrays) == 0:
        raise DataError(f"{', '.join(map(str, files[:3]))} hold no samples (arrays of length 0).")
    return arrays


class InMemory:
    """Arrays the caller passed (one per input), with the same ``take`` as :class:`ArraySet`."""

    def __init__(self, values: dict[str, np.ndarray], label: str) -> None:
        self.values = values
        self.label = label

    def __len__(self) -> int:
        return len(next(iter(self.values.values())))

    def integer(self, name: str) -> bool:
        """Is the array for input ``name`` of an integer dtype?"""
        return bool(np.issubdtype(self.values[name].dtype, np.integer))

    def take(self, indices: np.ndarray, dtypes: dict[str, np.dtype]) -> Chunk:
        values = {name: np.asarray(v[indices], dtypes[name]) for name, v in self.values.items()}
        return Chunk(values, [f"{self.label}[{i}]" for i in indices])


def indexed_chunks(source, order: np.ndarray, chunk_size: int, dtypes: dict[str, np.dtype]) -> Iterator[Chunk]:
    """``source.take`` over ``order`` in consecutive slices of ``chunk_size``."""
    for start in range(0, len(order), chunk_size):
        yield source.take(order[start : start + chunk_size], dtypes)
