"""Write the recalibrated checkpoint: every tensor as it was except the new statistics, atomically.

The new checkpoint is built in a hidden staging folder ``.<name>.tmp-<pid>-<host>-*`` beside the destination,
in parts, the way TensorFlow's sharded ``Saver`` does it: the tensors are read from the input with ``RestoreV2``
and written with ``SaveV2`` a part at a time (each input shard cut into parts of at most ``part_bytes``, or one
larger tensor), then the parts are joined with ``MergeV2Checkpoints`` (each part's ``.data`` file becomes one
shard, the indexes are merged). So memory holds one part, not the checkpoint, and a sharded input keeps its
shards. Partitioned variables are written slice by slice, with the layout their ``save_slice_info`` in the
meta graph gives. A checkpoint whose shards are each smaller than one part comes out with the same shards,
byte-identical to what ``tf.train.Saver`` wrote except the statistics.

When every input shard fits in one part and each replaced tensor is stored whole (the usual case), the same files
are made without decoding anything (:func:`_copy_in_place`): the shards are copied as they are, the new statistics
written over the old bytes, and the index's checksums of those tensors updated in place; the copy is verified
byte for byte against the input. Otherwise the parts route below runs.

The ``.meta`` is copied beside it with a ``checkpoint`` state file and the small files its scripts read beside it
(:func:`side_files`), every tensor is read back part by part and
its fingerprint compared with that of what was written (for untouched tensors, the input's own bytes), and
only then is the folder renamed into place.

Staging, the lock, Ctrl-C between steps (parts, merge, verification, rename), the swap and clean errors for a
full disk are :mod:`ckptfix.io.atomic`'s. :func:`copy_checkpoint` (parts, merge, read-back) also writes the
TF2 object-based checkpoints and SavedModel variables of Keras models.
"""

from __future__ import annotations

import glob
import re
import shutil
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ckptfix.errors import CheckpointError, OutputError
from ckptfix.io.atomic import atomic_output, check_destination
from ckptfix.io.bundle_index import tensor_entries, with_checksums
from ckptfix.io.checkpoint_reader import (
    CheckpointEntry, TensorSlice, fingerprint, mismatched, read_entries, restore, shard_of_each_key, unreadable,
)
from ckptfix.io.locate import CheckpointFiles, Prefix, write_state_file

PART_BYTES = 256 << 20
"""Default upper bound on the tensor bytes one ``SaveV2`` call holds (a larger tensor gets a part of its own)."""


def default_output_dir(source: CheckpointFiles) -> Path:
    """``<checkpoint dir>-recalibrated``, a sibling of the checkpoint's folder."""
    folder = source.prefix.parent
    return folder.with_name(folder.name + "-recalibrated")


def check_output_dir(source: CheckpointFiles, output_dir: Path, overwrite: bool) -> Path:
    """Refuse outputs that would touch the input or clobber data; return the absolute output folder."""
    return check_destination(output_dir, [source.prefix.parent], is_folder=True, overwrite=overwrite,
                             what="the checkpoint's folder")


def _split_into_parts(entries: list[CheckpointEntry], part_bytes: int, shards: Mapping[str, int]) -> list[list[CheckpointEntry]]:
    """The input's shards in order (``shards``: key -> shard id), each cut into consecutive runs of entries (in
    key order) of at most ``part_bytes``, or one larger entry alone."""
    parts = []
    for shard in sorted({shards.get(entry.key, 0) for entry in entries}):
        current, size = [], 0
        for entry in (entry for entry in entries if shards.get(entry.key, 0) == shard):
            if current and size + entry.nbytes > part_bytes:
                parts.append(current)
                current, size = [], 0
            current.append(entry)
            size += entry.nbytes
        parts += [current] if current else []
    return parts


def _save_part(source: Path, target: Path, part: list[CheckpointEntry], replaced: Mapping[str, list]) -> list[bytes]:
    """Write one part with SaveV2: untouched tensors as RestoreV2 read them, replaced ones from ``replaced``."""
    import tensorflow as tf

    untouched = [entry for entry in part if entry.key not in replaced]
    try:
        restored = iter(restore(source, untouched) if untouched else [])
    except tf.errors.OpError as error:
        raise unreadable(source, error) from None
    tensors = [tensor for entry in part for tensor in (replaced[entry.key] if entry.key in replaced else
                                                       [next(restored) for _ in entry.specs])]
    names = [entry.key for entry in part for _ in entry.specs]
    specs = [spec for entry in part for spec in entry.specs]
    tf.raw_ops.SaveV2(prefix=str(target), tensor_names=names, shape_and_slices=specs, tensors=tensors)
    return [fingerprint(tensor) for tensor in tensors]


def save_tensors(prefix: Path, values: Mapping[str, np.ndarray]) -> None:
    """Write ``values`` (name -> array, kept in its own dtype) as a new checkpoint at ``prefix`` (one SaveV2)."""
    import tensorflow as tf

    names = sorted(values)
    tf.raw_ops.SaveV2(
        prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
        tensors=[tf.constant(values[name]) for name in names],
    )


def _replacement_tensors(entries: list[CheckpointEntry], new_values: Mapping[str, np.ndarray], layout) -> dict:
    """Checkpoint key -> the new value cast to the stored dtype, as one tensor per saved slice."""
    import tensorflow as tf

    replaced = {}
    for entry in entries:
        if entry.key in new_values:
            value = np.asarray(new_values[entry.key], np.float64).reshape(entry.shape)
            cast = tf.cast(tf.constant(value), entry.dtype).numpy()
            parts = layout.get(entry.key)
            replaced[entry.key] = [tf.constant(part.take(cast), entry.dtype) for part in parts] if parts else \
                [tf.constant(cast, entry.dtype)]
    return replaced


def _verify(prefix: Path, entries: list[CheckpointEntry], parts: list[list[CheckpointEntry]],
            fingerprints: list[list[bytes]]) -> None:
    """Read the written checkpoint back a part at a time; every tensor must match what was written."""
    import tensorflow as tf

    try:
        written = {entry.key: entry.dtype for entry in read_entries(prefix)}
        wrong = sorted(set(written) ^ {entry.key for entry in entries})
        wrong += [entry.key for entry in entries if written.get(entry.key, entry.dtype) != entry.dtype]
        for part, expected in zip(parts, fingerprints):
            wrong += [] if wrong else mismatched(prefix, part, expected)
    except (CheckpointError, tf.errors.OpError):
        wrong = ["(unreadable)"]
    if wrong:
        raise OutputError(
            f"the written checkpoint did not read back as expected ({', '.join(wrong[:3])}); nothing was kept."
        )


def _data_files(prefix: Prefix) -> list[Path] | None:
    """The prefix's ``.data`` shards in order, or None unless they are exactly ``-00000-of-N`` .. ``-N-1-of-N``."""
    found = sorted(prefix.parent.glob(glob.escape(prefix.name) + ".data-?????-of-?????"))
    expected = [prefix.file(f".data-{k:05d}-of-{len(found):05d}") for k in range(len(found))]
    return found if found and found == expected else None


def _copy_in_place(source: Prefix, destination: Prefix, entries: list[CheckpointEntry], replaced: Mapping[str, list],
                   part_bytes: int, check_interrupt: Callable[[], None]) -> bool:
    """The input's files copied as they are, the new statistics written over the old bytes and the index's
    checksums of those tensors updated (:func:`bundle_index.with_checksums`); then verified: every ``.data`` byte
    equals the input's but the replaced ranges, which hold the new values, and TensorFlow reads the replaced
    tensors back (checking their checksums). The files are what the parts route writes for a checkpoint whose
    shards each fit in one part, without decoding and re-encoding every tensor.

    False (nothing written) where that route applies instead: a shard larger than ``part_bytes``, a replaced
    tensor stored in slices or in another size, an index that cannot be parsed or patched.
    """
    import tensorflow as tf

    stored = tensor_entries(source.file(".index"))
    files = _data_files(source)
    if stored is None or files is None or any(path.stat().st_size > part_bytes for path in files):
        return False
    keys = sorted(replaced)
    if any(key not in stored or stored[key].shard_id >= len(files) or len(replaced[key]) != 1
           or replaced[key][0].dtype == tf.string for key in keys):
        return False
    # the new tensors' bytes and checksums as TensorFlow writes them: SaveV2 of the statistics alone
    saved, data = {}, b""
    if keys:
        scratch = Prefix(destination.parent / ".statistics", "statistics")
        tf.raw_ops.SaveV2(prefix=str(scratch), tensor_names=keys, shape_and_slices=[""] * len(keys),
                          tensors=[replaced[key][0] for key in keys])
        saved, data = tensor_entries(scratch.file(".index")), scratch.file(".data-00000-of-00001").read_bytes()
        shutil.rmtree(scratch.parent)
    patches: dict[int, list[tuple[int, bytes]]] = {}  # shard -> (offset, new bytes)
    checksums = {}
    for key in keys:
        entry, new = stored[key], (saved or {}).get(key)
        if new is None or new.size != entry.size:
            return False
        patches.setdefault(entry.shard_id, []).append((entry.offset, data[new.offset: new.offset + new.size]))
        checksums[key] = new.crc32c
    index = with_checksums(source.file(".index"), checksums)
    if index is None:
        return False
    written = []
    for shard, path in enumerate(files):
        target = destination.file(path.name[len(source.name):])
        shutil.copyfile(path, target)
        with open(target, "r+b") as file:
            for offset, value in patches.get(shard, []):
                file.seek(offset)
                file.write(value)
        written.append(target)
        check_interrupt()
    destination.file(".index").write_bytes(index)
    check_interrupt()
    _verify_in_place(destination, files, written, patches, index, entries, replaced)
    return True


def _verify_in_place(destination: Prefix, sources: list[Path], written: list[Path],
                     patches: Mapping[int, list[tuple[int, bytes]]], index: bytes, entries: list[CheckpointEntry],
                     replaced: Mapping[str, list]) -> None:
    """Read the copy back: each ``.data`` file equals its source with the patches applied, byte for byte (in
    chunks), the index is the patched one, and TensorFlow lists the same keys and dtypes and reads the replaced
    tensors (verifying their checksums) as written."""
    import tensorflow as tf

    wrong = []
    chunk = 16 << 20
    expected, actual = bytearray(chunk), bytearray(chunk)
    for shard, (source, target) in enumerate(zip(sources, written)):
        changes = sorted(patches.get(shard, []))
        with open(source, "rb") as old, open(target, "rb") as new:
            start = 0
            while True:
                size, got = old.readinto(expected), new.readinto(actual)
                for offset, value in changes:  # the patches overlapping this chunk
                    low, high = max(offset, start), min(offset + len(value), start + size)
                    if low < high:
                        expected[low - start: high - start] = value[low - offset: high - offset]
                same = expected == actual if size == chunk else expected[:size] == actual[:got]  # memcmp, no copy
                if size != got or not same:
                    wrong.append(target.name)
                    break
                if not size:
                    break
                start += size
    if destination.file(".index").read_bytes() != index:
        wrong.append(destination.file(".index").name)
    try:
        keys = {entry.key: entry.dtype for entry in read_entries(destination)}
        wrong += [] if keys == {entry.key: entry.dtype for entry in entries} else ["(the keys)"]
        changed = [entry for entry in entries if entry.key in replaced]
        read = restore(destination, changed) if changed and not wrong else []
        wrong += [entry.key for entry, tensor in zip(changed, read)
                  if tensor.numpy().tobytes() != replaced[entry.key][0].numpy().tobytes()]
    except (CheckpointError, tf.errors.OpError):
        wrong = ["(unreadable)"]
    if wrong:
        raise OutputError(
            f"the written checkpoint did not read back as expected ({', '.join(wrong[:3])}); nothing was kept."
        )


def copy_checkpoint(
    source_prefix: Path | Prefix,
    destination_prefix: Path | Prefix,
    new_values: Mapping[str, np.ndarray],
    *,
    layout: Mapping[str, list[TensorSlice]] | None = None,
    part_bytes: int = PART_BYTES,
    check_interrupt: Callable[[], None] = lambda: None,
) -> None:
    """Copy the checkpoint at ``source_prefix`` to ``destination_prefix`` (a new prefix in a staging folder),
    ``new_values`` (key -> float64 array) replacing stored tensors, cast to each one's dtype.

    Written in parts of at most ``part_bytes`` (see the module docstring) under ``<destination folder>/.parts``,
    merged, then read back and compared by fingerprint; ``check_interrupt`` is called between the steps.
    """
    import tensorflow as tf

    layout = layout or {}
    entries = read_entries(source_prefix, layout)
    missing = sorted(set(new_values) - {entry.key for entry in entries})
    if missing:
        raise CheckpointError(f"the checkpoint has no tensor {missing[0]}: the .meta does not match the checkpoint.")
    replaced = _replacement_tensors(entries, new_values, layout)
    if _copy_in_place(Prefix.of(source_prefix), Prefix.of(destination_prefix), entries, replaced, part_bytes,
                      check_interrupt):
        return
    parts = _split_into_parts(entries, part_bytes, shard_of_each_key(source_prefix, entries))
    parts_dir = destination_prefix.parent / ".parts"
    parts_dir.mkdir()
    prefixes = [parts_dir / f"part-{number:05d}" for number in range(len(parts))]
    fingerprints = []
    for prefix, part in zip(prefixes, parts):
        fingerprints.append(_save_part(source_prefix, prefix, part, replaced))
        check_interrupt()
    tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=[str(prefix) for prefix in prefixes],
        destination_prefix=str(destination_prefix),
        delete_old_dirs=True,
    )
    check_interrupt()
    _verify(destination_prefix, entries, parts, fingerprints)


def write_recalibrated_checkpoint(
    source: CheckpointFiles,
    new_values: Mapping[str, np.ndarray],
    output_dir: Path,
    *,
    layout: Mapping[str, list[TensorSlice]] | None = None,
    overwrite: bool = False,
    part_bytes: int = PART_BYTES,
) -> Prefix:
    """Write ``source`` with ``new_values`` (checkpoint key -> float64 array) replaced, into ``output_dir``.

    Values are cast to each tensor's stored dtype. Returns the new checkpoint prefix (same basename as the
    input's, empty included). ``layout`` maps partitioned variables to their saved slices. ``part_bytes`` bounds the tensor
    bytes held in memory at once (see the module docstring); the output has one ``.data`` shard per part.
    """
    output_dir = check_output_dir(source, output_dir, overwrite)
    basename = source.prefix.name
    with atomic_output(output_dir, overwrite=overwrite, is_folder=True) as staged:
        copy_checkpoint(source.prefix, Prefix(staged.path, basename), new_values, layout=layout, part_bytes=part_bytes,
                        check_interrupt=staged.check_interrupt)
        if source.meta is not None:
            shutil.copyfile(source.meta, staged.path / (basename + ".meta"))
        for path in side_files(source.prefix.parent):
            shutil.copyfile(path, staged.path / path.name)
        write_state_file(staged.path, basename)
    return Prefix(output_dir, basename)


#: the largest file beside a checkpoint carried into the output folder (configuration, vocabularies, labels)
SIDE_FILE_BYTES = 8 << 20
_CHECKPOINT_FILE = re.compile(r"(\.index|\.meta|\.data-\d{5}-of-\d{5}|\.ckpt|\.tmp\d*)$|^events\.out\.tfevents\.")


def side_files(folder: Path) -> list[Path]:
    """The files beside a checkpoint that its model's own scripts read (chiron's ``model.json``, musicnn's
    ``config.json``, a vocabulary): every regular file of ``folder`` of at most :data:`SIDE_FILE_BYTES` that is no
    checkpoint's (``.index``, ``.data-*``, ``.meta``, the ``checkpoint`` state file, TensorBoard events) and not
    hidden. Subfolders are not carried."""
    carried = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name == "checkpoint" or _CHECKPOINT_FILE.search(path.name):
            continue
        if path.is_file() and path.stat().st_size <= SIDE_FILE_BYTES:
            carried.append(path)
    return carried
