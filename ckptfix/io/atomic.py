"""Atomic output: every writer (TF1 checkpoint folder, frozen graph file, Keras / TF2 file or folder) puts its
result in place through :func:`atomic_output`, so a destination holds nothing, the previous output, or the
whole new one.

Steps, under an exclusive ``flock`` on ``.<name>.lock`` beside the destination (released by the kernel when
its process dies, so a second run writing the same output fails at once with :class:`OutputError`):

1. remove staging folders of dead runs on this host (``.<name>.tmp-*`` / ``.<name>.old-*``);
2. create the staging folder ``.<name>.tmp-<pid>-<host>-*`` beside the destination (same file system); the
   writer writes and verifies the staged output there (for a folder output, the staging folder itself);
3. re-check that the destination did not appear meanwhile (unless ``overwrite``), then swap: a rename, or
   for an existing folder replaced with ``overwrite`` one ``renameat2(RENAME_EXCHANGE)`` where the file
   system supports it (else two renames, the previous output kept in ``.<name>.old-*`` between them).

Ctrl-C is taken only where the writer calls :attr:`Staged.check_interrupt` and before the swap, never inside
a TensorFlow call or between renames. Any exception removes the staging folder; an ``OSError`` or
TensorFlow ``OpError`` (disk full, file size limit, permission lost) becomes the one-line
``cannot write OUT: <reason>. Nothing was written; ...``. A ``kill -9`` can leave the staging folder, never a
partial output; the next run writing the same output removes it.
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
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ckptfix.errors import ForeignOutputError, OutputError, error_reason
from ckptfix.interrupts import commit, interrupts_between_steps
from ckptfix.io.outputs import overlap, through_link, umask

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


# ---------------------------------------------------------------------------------------- output checks


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable_folder(folder: Path) -> None:
    """``folder``, or the nearest of its ancestors that exists (the write creates the rest), is a writable folder;
    else an OutputError naming -o/--output. Nothing is created here: a run that fails later leaves no trace."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"cannot write to {folder}: {existing} is not a folder; choose another -o/--output.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {folder}: choose a writable -o/--output.")


#: what ckptfix writes into an output folder: checkpoint files (TF1 Saver's and TF2 object-based ones) and a
#: SavedModel's entries; a folder holding anything else is never replaced, ``--overwrite`` or not
_CHECKPOINT_FILE = re.compile(r"checkpoint|.*\.(?:index|meta|data-\d{5}-of-\d{5})")
_SAVED_MODEL = frozenset({"saved_model.pb", "saved_model.pbtxt", "variables", "assets", "assets.extra",
                          "fingerprint.pb", "keras_metadata.pb"})
#: model files ckptfix writes, by suffix, and how such a file starts (None: any content)
_MODEL_FILES = {".pb": None, ".pbtxt": None, ".keras": b"PK\x03\x04", ".h5": b"\x89HDF\r\n\x1a\n",
                ".hdf5": b"\x89HDF\r\n\x1a\n"}


def foreign_content(output: Path, copies: Path | None = None) -> str | None:
    """Why ``--overwrite`` may not replace the existing ``output`` (None: it may): a folder must hold a model
    ckptfix writes (a checkpoint, a SavedModel) and nothing else (``copies``: a folder whose entries the output
    copies, the input SavedModel's); a file must be a model file of a kind ckptfix writes."""
    if output.is_dir():
        names = sorted(os.listdir(output))
        if not names:
            return None
        copied = set(os.listdir(copies)) if copies is not None and copies.is_dir() else set()
        foreign = [name for name in names if not (_CHECKPOINT_FILE.fullmatch(name) or name in _SAVED_MODEL
                                                   or name in copied)]
        if foreign:
            return f"holds {foreign[0]}" + (f" and {len(foreign) - 1} more file(s)" if len(foreign) > 1 else "") + \
                ", which ckptfix did not write"
        if not any(name == "checkpoint" or name.endswith(".index") or name.startswith("saved_model.")
                   for name in names):
            return "holds no checkpoint or SavedModel"
        return None
    suffix = output.suffix.lower()
    if suffix not in _MODEL_FILES:
        return "is not a model file (.pb, .pbtxt, .keras, .h5)"
    magic = _MODEL_FILES[suffix]
    if magic is not None:
        with open(output, "rb") as handle:
            if handle.read(len(magic)) != magic:
                return f"is not a {suffix} file"
    return None


def _refuse_foreign(output: Path, copies: Path | None) -> None:
    reason = foreign_content(output, copies)
    if reason is not None:
        raise ForeignOutputError(f"output {output} {reason}: --overwrite replaces only a model ckptfix writes; choose "
                          "another -o/--output.")


def check_destination(output: Path, inputs: Sequence[Path], *, is_folder: bool, overwrite: bool, what: str,
                      copies: Path | None = None) -> Path:
    """Refuse an output that is, sits inside or contains one of ``inputs`` (``what`` names them in the
    message), exists as the wrong kind, exists (a non-empty folder) without ``overwrite``, exists with
    ``overwrite`` but holds something ckptfix did not write (:func:`foreign_content`), or whose folder cannot
    be created or written. Returns the absolute output path (a link's target:
    :func:`~ckptfix.io.outputs.through_link`); creates nothing."""
    output = through_link(output)
    resolved = output.resolve()
    for item in (Path(path).resolve() for path in inputs):
        how = overlap(resolved, item)
        if how == "is":
            raise OutputError(f"output {output} is {what}: choose another -o/--output (the input is never changed).")
        if how is not None:
            raise OutputError(f"output {output} {how} {what}: choose another -o/--output.")
    if output.exists():
        if is_folder and not output.is_dir():
            raise OutputError(f"output {output} exists and is not a folder: choose another -o/--output.")
        if not is_folder and output.is_dir():
            raise OutputError(f"output {output} is a folder: pass a file name with -o/--output.")
        if not overwrite and is_folder and any(output.iterdir()):
            raise OutputError(f"output {output} exists and is not empty: pass --overwrite or choose another -o.")
        if not overwrite and not is_folder:
            raise OutputError(f"output {output} exists: pass --overwrite or choose another -o/--output.")
        if overwrite:
            _refuse_foreign(output, copies)
    _check_writable_folder(output.parent)
    return output


# ---------------------------------------------------------------------------------------- the write


@dataclass(frozen=True)
class Staged:
    """Where to write: ``path`` is the staged output (a folder output: the staging folder itself; a file
    output: ``<staging folder>/<name>``); ``folder`` is the staging folder, removed afterwards (scratch
    files may go there). Call ``check_interrupt()`` between steps: a Ctrl-C received meanwhile is raised there."""

    path: Path
    folder: Path
    check_interrupt: Callable[[], None]


@contextlib.contextmanager
def atomic_output(destination: Path, *, overwrite: bool, is_folder: bool,
                  copies: Path | None = None) -> Iterator[Staged]:
    """Stage, lock, re-check and swap ``destination`` (see the module docstring; a link: its target, which
    the link keeps pointing at; ``copies``: as :func:`check_destination`'s)::

        with atomic_output(out, overwrite=False, is_folder=True) as staged:
            write_into(staged.path); staged.check_interrupt(); verify(staged.path)

    The swap happens when the block ends without an exception; any exception removes the staging folder.
    """
    destination = through_link(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True, mode=0o777)
        with _exclusive_lock(destination), interrupts_between_steps() as check_interrupt:
            remove_stale_staging(destination)
            staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(destination, "tmp"), dir=destination.parent))
            os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes 0700; a folder output gets what mkdir would give
            try:
                yield Staged(staging if is_folder else staging / destination.name, staging, check_interrupt)
                check_interrupt()
                _move_into_place(staging if is_folder else staging / destination.name, destination, overwrite, copies)
                commit()  # the commit point: from here a Ctrl-C no longer undoes the run
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except Exception as error:
        if isinstance(error, OSError) or _is_op_error(error):
            raise _write_failed(destination, error_reason(error)) from None
        raise


def _write_failed(destination: Path, reason: str) -> OutputError:
    """The one-line error for a write that failed (disk full, permission...): nothing was left behind."""
    return OutputError(
        f"cannot write {destination}: {reason}. "
        "Nothing was written; free disk space, check permissions or choose another -o."
    )


def _is_op_error(error: BaseException) -> bool:
    """A TensorFlow op error (e.g. SaveV2 on a full disk: ResourceExhausted); TensorFlow is not imported here."""
    tensorflow = sys.modules.get("tensorflow")
    return tensorflow is not None and isinstance(error, tensorflow.errors.OpError)


# ---------------------------------------------------------------------------------------- staging and lock


def _staging_prefix(destination: Path, kind: str) -> str:
    """``.<name>.<kind>-<pid>-<host>-``: whose folder it is, so a later run can tell a dead run's leftovers."""
    return f".{destination.name}.{kind}-{os.getpid()}-{socket.gethostname()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_staging(destination: Path) -> list[Path]:
    """Remove ``.<name>.tmp-*`` / ``.old-*`` folders beside ``destination`` left by runs on this host that are gone.

    Folders of a live process, of another host, or not named by ckptfix are left alone. Returns what was removed.
    """
    host = socket.gethostname()
    removed = []
    for kind in ("tmp", "old"):
        start = f".{destination.name}.{kind}-"
        for folder in destination.parent.glob(glob.escape(start) + "*"):
            owner = folder.name[len(start):]
            pid = owner.split("-", 1)[0]
            if (pid.isdigit() and owner.startswith(f"{pid}-{host}-") and folder.is_dir()
                    and not _process_alive(int(pid))):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


@contextlib.contextmanager
def _exclusive_lock(destination: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside ``destination``; fail at once if another run has it.

    The kernel drops the lock when its process dies, even by ``kill -9``, so a leftover lock file is harmless;
    the holder removes it before unlocking, and a run that locked a file already unlinked tries again.
    """
    lock_path = destination.parent / f".{destination.name}.lock"
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise OutputError(
                f"another run is writing {destination} right now: wait for it to finish or choose another -o."
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


# ---------------------------------------------------------------------------------------- the swap


def _renameat2(first: Path, second: Path, flags: int) -> bool:
    """Linux ``renameat2(first, second, flags)``; False where the call or the flag is not supported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _appeared(destination: Path) -> OutputError:
    return OutputError(f"output {destination} appeared while writing: pass --overwrite or choose another -o.")


def _move_into_place(staged: Path, destination: Path, overwrite: bool, copies: Path | None = None) -> None:
    """Put ``staged`` at ``destination``. Without ``overwrite`` an existing destination (a non-empty folder,
    or any file) is refused, and with it one that holds what ckptfix did not write (re-checked: it may have
    changed during the run); a previous output replaced ends up in the staging folder (removed by the caller)."""
    if overwrite and destination.exists():
        _refuse_foreign(destination, copies)
    if staged.is_file():
        if overwrite:
            os.replace(staged, destination)
            return
        try:  # atomic no-clobber: a file created meanwhile by anyone is never replaced
            done = _renameat2(staged, destination, _RENAME_NOREPLACE)
        except FileExistsError:
            raise _appeared(destination) from None
        if not done:
            if destination.exists():
                raise _appeared(destination)
            os.rename(staged, destination)
        return
    if not destination.exists():
        os.rename(staged, destination)
        return
    if any(destination.iterdir()) and not overwrite:
        raise _appeared(destination)
    if _renameat2(staged, destination, _RENAME_EXCHANGE):
        return
    retired = Path(tempfile.mkdtemp(prefix=_staging_prefix(destination, "old"), dir=destination.parent))
    os.rename(destination, retired / "previous")
    try:
        os.rename(staged, destination)
    except BaseException:
        os.rename(retired / "previous", destination)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
