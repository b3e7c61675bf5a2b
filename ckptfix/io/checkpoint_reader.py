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


@dataclass(frozen=True)
class Expected:
    """What a restore reads a key as: the dtype of the variable it is restored into, and the full shape that
    variable takes (None: not checked -- unknown dims, or an assign that does not validate shapes)."""

    key: str
    dtype: object
    shape: tuple[int, ...] | None


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def check_expected(reader, prefix, expected: Iterable[Expected], restorer: str, missing_fix: str, mismatch_fix: str) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint ``reader`` reads (at ``prefix``) holds every ``expected``
    key with its dtype and shape: before a restore, whose own errors name a key, a shape or neither depending on
    the op that failed. The message names the first key, stored vs expected, and says how many more differ;
    ``restorer`` names what restores them (a graph, a model), ``missing_fix`` / ``mismatch_fix`` the way out."""
    dtypes, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    entries = {entry.key: entry for entry in expected}  # one per key (a key's slices agree)
    missing = [key for key in entries if key not in dtypes]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint {prefix} has no key {missing[0]}{more}, which {restorer} restores: {missing_fix}.")

    def wrong(entry: Expected) -> str | None:
        stored_dtype, stored_shape = dtypes[entry.key], tuple(shapes[entry.key])
        if entry.dtype != stored_dtype:
            return f"is stored as {stored_dtype.name}, but {restorer} restores it into a {entry.dtype.name} variable"
        if entry.shape is not None and tuple(entry.shape) != stored_shape:
            return (f"is stored with shape {_shape(stored_shape)}, but {restorer} restores it into a variable of "
                    f"shape {_shape(entry.shape)}")
        return None

    differing = [(entry.key, reason) for entry in entries.values() if (reason := wrong(entry)) is not None]
    if differing:
        key, reason = differing[0]
        more = f" ({len(differing) - 1} more entries differ too)" if len(differing) > 1 else ""
        raise CheckpointError(f"checkpoint {prefix}: key {key} {reason}{more}: {mismatch_fix}.")


def _damaged_entry(prefix) -> tuple[str, BaseException] | None:
    """The first key (sorted) whose bytes TensorFlow's reader cannot read back (checksum, short read), and the
    error; None if every tensor reads. Reads the checkpoint one tensor at a time: only after a restore failed."""
    import tensorflow as tf

    try:
        reader = open_reader(prefix)
    except (tf.errors.OpError, ValueError):
        return None
    for key in sorted(reader.get_variable_to_dtype_map()):
        try:
            reader.get_tensor(key)
        except (tf.errors.OpError, ValueError, RuntimeError) as error:
            return key, error
    return None


def _shard_file(prefix, key: str) -> str:
    """The name of the ``.data`` file holding ``key``, or "a .data shard" when the index cannot tell."""
    shard = (shard_of_each_tensor(Path(os.fspath(prefix) + ".index")) or {}).get(key)
    path = Path(os.fspath(prefix))
    found = sorted(path.parent.glob(f"{path.name}.data-{shard:05d}-of-*")) if shard is not None else []
    return found[0].name if found else "a .data shard"


def unreadable_entry(prefix, key: str, error: BaseException) -> CheckpointError:
    """The error for an entry whose bytes cannot be read (``reader.get_tensor`` or a restore failed on it)."""
    reason = error_reason(error)
    # a restore op raises DataLossError, the checkpoint reader a plain OpError (code UNKNOWN): the text tells
    if "Checksum does not match" in reason:
        return CheckpointError(f"checkpoint {prefix}: key {key} fails its checksum in {_shard_file(prefix, key)}: "
                               "the file is corrupt; copy it again from a good source.")
    return CheckpointError(f"cannot read key {key} of checkpoint {prefix} ({reason}): the checkpoint is damaged; "
                           "copy it again from a good source.")


def stored_tensor(reader, prefix, key: str):
    """The tensor the checkpoint ``reader`` reads (at ``prefix``) holds under ``key``, None without one; an entry
    whose bytes cannot be read is a :class:`CheckpointError` naming it."""
    if not reader.has_tensor(key):
        return None
    try:
        return reader.get_tensor(key)
    except Exception as error:  # a damaged shard: TensorFlow raises several kinds here
        raise unreadable_entry(prefix, key, error) from None


def damaged_error(error: BaseException, prefix) -> CheckpointError:
    """The error for a restore of ``prefix`` that failed with ``DataLossError`` (what :func:`check_expected` cannot
    see beforehand): the first entry that cannot be read back, named."""
    damaged = _damaged_entry(prefix)
    if damaged is not None:
        return unreadable_entry(prefix, *damaged)
    return CheckpointError(f"checkpoint {prefix} is damaged ({error_reason(error)}): copy it again from a good source.")


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
