"""Write the recalibrated checkpoint: every tensor as it was except the new statistics, atomically.

The new checkpoint is built in a hidden staging folder ``.<name>.tmp-<pid>-<host>-*`` beside the destination,
in parts, the way TensorFlow's sharded ``Saver`` does it: the tensors are read from the input with ``RestoreV2``
and written with ``SaveV2`` a part at a time (each input shard cut into parts of at most ``part_bytes``, or one
larger tensor), then the parts are joined with ``MergeV2Checkpoints`` (each part's ``.data`` file becomes one
shard, the indexes are merged). So memory holds one part, not the checkpoint, and a sharded input keeps its
shards. Partitioned variables are written slice by slice, with the layout their ``save_slice_info`` in the
meta graph gives. A checkpoint whose shards are each smaller than one part comes out with the same shards,
byte-identical to what ``tf.train.Saver`` wrote except the statistics.

The ``.meta`` is copied beside it with a ``checkpoint`` state file, every tensor is read back part by part and
its fingerprint compared with that of what was written (for untouched tensors, the input's own bytes), and
only then is the folder renamed into place.

Faults: an exception or Ctrl-C (taken between steps: parts, merge, verification, rename) removes the staging
folder; a ``kill -9`` can leave it, never a partial output, and the next run writing the same output removes
staging folders whose process is gone. An exclusive
``flock`` on ``.<name>.lock`` (released by the kernel when its process dies) makes a second run writing the
same output at the same time fail with :class:`OutputError` instead of interleaving. An existing output
replaced with ``overwrite`` is swapped with the new one in a single ``renameat2(RENAME_EXCHANGE)`` where the
file system supports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from ckptfix.checkpoints.bundle_index import shard_of_each_tensor
from ckptfix.checkpoints.locate import CheckpointFiles
from ckptfix.errors import CheckpointError, OutputError

PART_BYTES = 256 << 20
"""Default upper bound on the tensor bytes one ``SaveV2`` call holds (a larger tensor gets a part of its own)."""


@dataclass(frozen=True)
class TensorSlice:
    """One saved slice of a partitioned variable: ``spec`` as SaveV2 takes it, and where it sits."""

    spec: str
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]

    def take(self, full: np.ndarray) -> np.ndarray:
        return full[tuple(slice(o, o + n) for o, n in zip(self.offsets, self.lengths))]


def default_output_dir(source: CheckpointFiles) -> Path:
    """``<checkpoint dir>-recalibrated``, a sibling of the checkpoint's folder."""
    folder = source.prefix.parent
    return folder.with_name(folder.name + "-recalibrated")


def check_output_dir(source: CheckpointFiles, output_dir: Path, overwrite: bool) -> Path:
    """Refuse outputs that would touch the input or clobber data; return the absolute output folder."""
    output_dir = Path(output_dir).expanduser().absolute()
    input_dir = source.prefix.parent.resolve()
    resolved = output_dir.resolve()
    if resolved == input_dir or input_dir in resolved.parents:
        raise OutputError(f"output {output_dir} is the checkpoint's folder or inside it: choose another -o/--output.")
    if resolved in input_dir.parents:
        raise OutputError(f"output {output_dir} contains the input checkpoint: choose another -o/--output.")
    if output_dir.exists():
        if not output_dir.is_dir():
            raise OutputError(f"output {output_dir} exists and is not a folder: choose another -o/--output.")
        if any(output_dir.iterdir()) and not overwrite:
            raise OutputError(f"output {output_dir} exists and is not empty: pass --overwrite or choose another -o.")
    parent = output_dir.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write to {output_dir}: {parent} is not a folder; choose another -o/--output.")
    ensure_writable_folder(parent)
    return output_dir


def ensure_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and check it is writable, or raise an OutputError naming -o/--output."""
    if not folder.exists():
        try:
            folder.mkdir(parents=True)
        except OSError as error:
            raise OutputError(f"cannot create {folder}: {error.strerror}; choose another -o/--output.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {folder}: choose a writable -o/--output.")


@dataclass(frozen=True)
class _Entry:
    """One checkpoint key as it is saved: its dtype, full shape and slice specs (``("",)``: stored whole)."""

    key: str
    dtype: object
    shape: tuple[int, ...]
    specs: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.size


def _op_error_reason(error) -> str:
    """The readable part of a TensorFlow op error: no ``{{function_node ...}}`` prefix, no ``[Op:...]`` suffix,
    and for file errors (``<path>; No space left on device``) the reason without the temporary file's path."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*$", "", str(getattr(error, "message", error)))
    lines = message.strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    path, separator, reason = first.rpartition("; ")
    return reason if separator and path.startswith("/") else first


def _unreadable(prefix: Path, error) -> CheckpointError:
    return CheckpointError(f"cannot read checkpoint {prefix}: {_op_error_reason(error)}. Is it complete and uncorrupted?")


def _entries(prefix: Path, layout: Mapping[str, list[TensorSlice]]) -> list[_Entry]:
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except (tf.errors.OpError, ValueError) as error:
        raise _unreadable(prefix, error) from None
    dtypes, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    return [
        _Entry(key, dtypes[key], tuple(shapes[key]), tuple(part.spec for part in layout.get(key, ())) or ("",))
        for key in sorted(dtypes)
    ]


def _split_into_parts(entries: list[_Entry], part_bytes: int, shards: Mapping[str, int]) -> list[list[_Entry]]:
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


def _restore(prefix: Path, part: list[_Entry]) -> list:
    """The part's tensors (one per slice spec) as stored under ``prefix``, read by TensorFlow's RestoreV2."""
    import tensorflow as tf

    names = [entry.key for entry in part for _ in entry.specs]
    specs = [spec for entry in part for spec in entry.specs]
    dtypes = [entry.dtype for entry in part for _ in entry.specs]
    return tf.raw_ops.RestoreV2(prefix=str(prefix), tensor_names=names, shape_and_slices=specs, dtypes=dtypes)


def _fingerprint(tensor) -> bytes:
    """The tensor's dtype, shape and TensorFlow ``Fingerprint`` (farmhash64 of all its bytes; string elements
    with their lengths), computed in place: no host copy of the tensor."""
    import tensorflow as tf

    contents = tf.fingerprint(tf.reshape(tensor, [1, -1])).numpy().tobytes()
    return f"{tensor.dtype.name}{tensor.shape}".encode() + contents


def _save_part(source: Path, target: Path, part: list[_Entry], replaced: Mapping[str, list]) -> list[bytes]:
    """Write one part with SaveV2: untouched tensors as RestoreV2 read them, replaced ones from ``replaced``."""
    import tensorflow as tf

    untouched = [entry for entry in part if entry.key not in replaced]
    try:
        restored = iter(_restore(source, untouched) if untouched else [])
    except tf.errors.OpError as error:
        raise _unreadable(source, error) from None
    tensors = [tensor for entry in part for tensor in (replaced[entry.key] if entry.key in replaced else
                                                       [next(restored) for _ in entry.specs])]
    names = [entry.key for entry in part for _ in entry.specs]
    specs = [spec for entry in part for spec in entry.specs]
    tf.raw_ops.SaveV2(prefix=str(target), tensor_names=names, shape_and_slices=specs, tensors=tensors)
    return [_fingerprint(tensor) for tensor in tensors]


def save_tensors(prefix: Path, values: Mapping[str, np.ndarray]) -> None:
    """Write ``values`` (name -> array, kept in its own dtype) as a new checkpoint at ``prefix`` (one SaveV2)."""
    import tensorflow as tf

    names = sorted(values)
    tf.raw_ops.SaveV2(
        prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
        tensors=[tf.constant(values[name]) for name in names],
    )


def _replacement_tensors(entries: list[_Entry], new_values: Mapping[str, np.ndarray], layout) -> dict:
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


def _verify(prefix: Path, entries: list[_Entry], parts: list[list[_Entry]], fingerprints: list[list[bytes]]) -> None:
    """Read the written checkpoint back a part at a time; every tensor must match what was written."""
    import tensorflow as tf

    try:
        written = {entry.key: entry.dtype for entry in _entries(prefix, {})}
        wrong = sorted(set(written) ^ {entry.key for entry in entries})
        wrong += [entry.key for entry in entries if written.get(entry.key, entry.dtype) != entry.dtype]
        for part, expected in zip(parts, fingerprints):
            wrong += [] if wrong else _mismatched(prefix, part, expected)
    except (CheckpointError, tf.errors.OpError):
        wrong = ["(unreadable)"]
    if wrong:
        raise OutputError(
            f"the written checkpoint did not read back as expected ({', '.join(wrong[:3])}); nothing was kept."
        )


def _mismatched(prefix: Path, part: list[_Entry], expected: list[bytes]) -> list[str]:
    """Keys of ``part`` whose tensors under ``prefix`` lack the ``expected`` fingerprints (one part in memory)."""
    keys = [entry.key for entry in part for _ in entry.specs]
    read = _restore(prefix, part)
    return [key for key, tensor, fingerprint in zip(keys, read, expected) if _fingerprint(tensor) != fingerprint]


def _write_state_file(folder: Path, basename: str) -> None:
    (folder / "checkpoint").write_text(
        f'model_checkpoint_path: "{basename}"\nall_model_checkpoint_paths: "{basename}"\n'
    )


def write_recalibrated_checkpoint(
    source: CheckpointFiles,
    new_values: Mapping[str, np.ndarray],
    output_dir: Path,
    *,
    layout: Mapping[str, list[TensorSlice]] | None = None,
    overwrite: bool = False,
    part_bytes: int = PART_BYTES,
) -> Path:
    """Write ``source`` with ``new_values`` (checkpoint key -> float64 array) replaced, into ``output_dir``.

    Values are cast to each tensor's stored dtype. Returns the new checkpoint prefix (same basename as the
    input's). ``layout`` maps partitioned variables to their saved slices. ``part_bytes`` bounds the tensor
    bytes held in memory at once (see the module docstring); the output has one ``.data`` shard per part.
    """
    import tensorflow as tf

    output_dir = check_output_dir(source, output_dir, overwrite)
    layout = layout or {}
    entries = _entries(source.prefix, layout)
    missing = sorted(set(new_values) - {entry.key for entry in entries})
    if missing:
        raise CheckpointError(f"the checkpoint has no tensor {missing[0]}: the .meta does not match the checkpoint.")
    replaced = _replacement_tensors(entries, new_values, layout)
    shards = shard_of_each_tensor(source.index) or {}
    parts = _split_into_parts(entries, part_bytes, shards if set(shards) == {e.key for e in entries} else {})
    basename = source.prefix.name
    try:
        with _exclusive_lock(output_dir), _interrupts_between_steps() as check_interrupt:
            remove_stale_staging(output_dir)
            staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(output_dir, "tmp"), dir=output_dir.parent))
            try:
                parts_dir = staging / ".parts"
                parts_dir.mkdir()
                prefixes = [parts_dir / f"part-{number:05d}" for number in range(len(parts))]
                fingerprints = []
                for prefix, part in zip(prefixes, parts):
                    fingerprints.append(_save_part(source.prefix, prefix, part, replaced))
                    check_interrupt()
                tf.raw_ops.MergeV2Checkpoints(
                    checkpoint_prefixes=[str(prefix) for prefix in prefixes],
                    destination_prefix=str(staging / basename),
                    delete_old_dirs=True,
                )
                if source.meta is not None:
                    shutil.copyfile(source.meta, staging / (basename + ".meta"))
                _write_state_file(staging, basename)
                check_interrupt()
                _verify(staging / basename, entries, parts, fingerprints)
                check_interrupt()
                move_into_place(staging, output_dir, overwrite)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:
        raise _write_failed(output_dir, error.strerror or str(error)) from None
    except tf.errors.OpError as error:
        raise _write_failed(output_dir, _op_error_reason(error)) from None
    return output_dir / basename


@contextlib.contextmanager
def _interrupts_between_steps() -> Iterator[Callable[[], None]]:
    """Note Ctrl-C while writing and raise it (KeyboardInterrupt) only where the returned check is called.

    Two reasons: a KeyboardInterrupt raised inside a TensorFlow call can apparently be lost (a CLI run
    interrupted while writing once finished and exited 0; our guess is a conversion fallback inside TF that
    clears Python errors), and one raised between the renames that put the output in place could lose it.
    A Ctrl-C after the last check lets the write finish.
    Only Python's default SIGINT handler in the main thread is replaced; any other is left alone.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: None
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))

    def check() -> None:
        if received:
            raise KeyboardInterrupt

    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _write_failed(output_dir: Path, reason: str) -> OutputError:
    return OutputError(
        f"cannot write {output_dir}: {reason}. "
        "Nothing was written; free disk space, check permissions or choose another -o."
    )


def _staging_prefix(output_dir: Path, kind: str) -> str:
    """``.<name>.<kind>-<pid>-<host>-``: whose folder it is, so a later run can tell a dead run's leftovers."""
    return f".{output_dir.name}.{kind}-{os.getpid()}-{socket.gethostname()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_staging(output_dir: Path) -> list[Path]:
    """Remove ``.<name>.tmp-*`` / ``.old-*`` folders beside ``output_dir`` left by runs on this host that are gone.

    Folders of a live process, of another host, or not named by ckptfix are left alone. Returns what was removed.
    """
    host = socket.gethostname()
    removed = []
    for kind in ("tmp", "old"):
        start = f".{output_dir.name}.{kind}-"
        for folder in output_dir.parent.glob(glob.escape(start) + "*"):
            owner = folder.name[len(start):]
            pid = owner.split("-", 1)[0]
            if (pid.isdigit() and owner.startswith(f"{pid}-{host}-") and folder.is_dir()
                    and not _process_alive(int(pid))):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


@contextlib.contextmanager
def _exclusive_lock(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside ``output_dir``; fail at once if another run has it.

    The kernel drops the lock when its process dies, even by ``kill -9``, so a leftover lock file is harmless;
    the holder removes it before unlocking, and a run that locked a file already unlinked tries again.
    """
    lock_path = output_dir.parent / f".{output_dir.name}.lock"
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise OutputError(
                f"another run is writing {output_dir} right now: wait for it to finish or choose another -o."
            ) from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(descriptor)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not supported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def move_into_place(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``output_dir``; an existing one ends up in ``staging`` (removed by the caller)."""
    if output_dir.exists():
        if any(output_dir.iterdir()) and not overwrite:
            raise OutputError(f"output {output_dir} appeared while writing: pass --overwrite or choose another -o.")
        if _exchange(staging, output_dir):
            return
        retired = Path(tempfile.mkdtemp(prefix=_staging_prefix(output_dir, "old"), dir=output_dir.parent))
        os.rename(output_dir, retired / "previous")
        try:
            os.rename(staging, output_dir)
        except BaseException:
            os.rename(retired / "previous", output_dir)
            raise
        finally:
            shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, output_dir)
