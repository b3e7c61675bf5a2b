"""Read a V2 checkpoint (TF1 ``Saver`` or TF2 object-based: the same bundle format) a part at a time.

Every key is listed with its dtype, full shape and slice specs (:class:`CheckpointEntry`); tensors are read with
TensorFlow's ``RestoreV2`` for a list of entries at once, so memory holds those entries only. A tensor is
compared by :func:`fingerprint` (its dtype, shape and TensorFlow ``Fingerprint``, computed in place). Which
shard holds each key comes from the ``.index`` (:mod:`ckptfix.io.bundle_index`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ckptfix.errors import CheckpointError, error_reason
from ckptfix.io.bundle_index import shard_of_each_tensor


@dataclass(frozen=True)
class TensorSlice:
    """One saved slice of a partitioned variable: ``spec`` as SaveV2 takes it, and where it sits."""

    spec: str
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]

    def take(self, full: np.ndarray) -> np.ndarray:
        return full[tuple(slice(o, o + n) for o, n in zip(self.offsets, self.lengths))]


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint key as it is saved: its dtype, full shape and slice specs (``("",)``: stored whole)."""

    key: str
    dtype: object
    shape: tuple[int, ...]
    specs: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.size


def unreadable(prefix: Path, error: BaseException) -> CheckpointError:
    """The error for a checkpoint TensorFlow cannot read (truncated, corrupted, a shard missing)."""
    return CheckpointError(f"cannot read checkpoint {prefix}: {error_reason(error)}. Is it complete and uncorrupted?")


def open_reader(prefix):
    """TensorFlow's reader of the checkpoint at ``prefix`` (a string or path-like). Unlike
    ``tf.train.load_checkpoint``, a prefix that is a folder (``"dir/"``, saved with an empty basename) is the
    prefix, not a folder to look up a state file in. Raises TensorFlow's errors."""
    import tensorflow as tf

    return tf.compat.v1.train.NewCheckpointReader(os.fspath(prefix))


def read_entries(prefix: Path, layout: Mapping[str, list[TensorSlice]] | None = None) -> list[CheckpointEntry]:
    """Every key of the checkpoint at ``prefix``, sorted; ``layout`` gives partitioned variables' slices."""
    import tensorflow as tf

    layout = layout or {}
    try:
        reader = open_reader(prefix)
    except (tf.errors.OpError, ValueError) as error:
        raise unreadable(prefix, error) from None
    dtypes, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    return [
        CheckpointEntry(key, dtypes[key], tuple(shapes[key]), tuple(part.spec for part in layout.get(key, ())) or ("",))
        for key in sorted(dtypes)
    ]


def restore(prefix: Path, entries: Iterable[CheckpointEntry]) -> list:
    """The entries' tensors (one per slice spec) as stored under ``prefix``, read by TensorFlow's RestoreV2."""
    import tensorflow as tf

    entries = list(entries)
    names = [entry.key for entry in entries for _ in entry.specs]
    specs = [spec for entry in entries for spec in entry.specs]
    dtypes = [entry.dtype for entry in entries for _ in entry.specs]
    return tf.raw_ops.RestoreV2(prefix=str(prefix), tensor_names=names, shape_and_slices=specs, dtypes=dtypes)


def fingerprint(tensor) -> bytes:
    """The tensor's dtype, shape and TensorFlow ``Fingerprint`` (farmhash64 of all its bytes; string elements
    with their lengths), computed in place: no host copy of the tensor."""
    import tensorflow as tf

    contents = tf.fingerprint(tf.reshape(tensor, [1, -1])).numpy().tobytes()
    return f"{tensor.dtype.name}{tensor.shape}".encode() + contents


def mismatched(prefix: Path, entries: list[CheckpointEntry], expected: list[bytes]) -> list[str]:
    """Keys of ``entries`` whose tensors under ``prefix`` lack the ``expected`` fingerprints (these entries
    in memory only)."""
    keys = [entry.key for entry in entries for _ in entry.specs]
    read = restore(prefix, entries)
    return [key for key, tensor, print_ in zip(keys, read, expected) if fingerprint(tensor) != print_]


def shard_of_each_key(prefix: Path, entries: list[CheckpointEntry]) -> dict[str, int]:
    """Key -> the ``.data`` shard it is stored in, from the prefix's ``.index``; empty (all in shard 0) when the
    index cannot be parsed or its keys are not exactly the checkpoint's."""
    shards = shard_of_each_tensor(Path(os.fspath(prefix) + ".index")) or {}
    return shards if set(shards) == {entry.key for entry in entries} else {}
