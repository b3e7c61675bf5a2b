"""Every path a run writes, checked against every path it reads, before any work; side outputs written
atomically.

A run reads CKPT's files (its folder, ``.meta``, the Keras file or SavedModel folder), ``--meta``,
``--architecture``, ``--against`` and DATA (a file or folder), and writes the repaired model (``-o``) and the
side outputs (``--report``, ``--summary``, ``--plot``). :func:`check_run_paths` refuses, before anything is
loaded:

* an output that is an input, sits inside an input folder, or contains an input (``-o`` set to the data
  folder or its parent with ``--overwrite`` would replace the data);
* a side output that is another output, or sits inside the repaired model's folder (replaced whole);
* a side output whose folder does not exist, is not writable, or that names an existing folder;
* a side output that exists, without ``--overwrite`` (but for GitHub's step summary, below);
* a ``--plot`` whose extension matplotlib does not write.

Nothing is created by the checks. Side outputs are staged (:func:`staged_files`): each written to a temporary
file beside its destination before the repaired model is written, and renamed into place right after it,
with the permissions a plain ``open()`` would give (the umask's). A side output given as a symbolic link is
written to the file the link points to (the link stays). ``--summary`` naming the file of
``$GITHUB_STEP_SUMMARY`` (the same file, however named) is appended to, as that file's convention is (each
step of a GitHub Actions job adds its Markdown; replacing it would lose the others'): no ``--overwrite``
needed, nothing replaced.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ckptfix.errors import OutputError


@dataclass(frozen=True)
class Place:
    """A path a run reads or writes, and how a message names it (``the calibration data``, ``--report``)."""

    path: Path
    what: str

    @property
    def resolved(self) -> Path:
        return Path(self.path).expanduser().resolve()


def overlap(output: Path, item: Path) -> str | None:
    """How ``output`` and ``item`` (both resolved) overlap: ``is``, ``is inside``, ``contains``, or None."""
    if output == item:
        return "is"
    if item in output.parents:
        return "is inside"
    if output in item.parents:
        return "contains"
    return None


def umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def appends(path: Path) -> bool:
    """Whether a summary written to ``path`` is appended: ``path`` is the file ``$GITHUB_STEP_SUMMARY`` names."""
    named = os.environ.get("GITHUB_STEP_SUMMARY", "").strip()
    return bool(named) and os.path.realpath(named) == os.path.realpath(Path(path).expanduser())


def _appended(side: Place) -> bool:
    return side.what == "--summary" and appends(side.path)


def check_run_paths(destination: Place | None, side_outputs: Sequence[Place], inputs: Sequence[Place],
                    overwrite: bool = False) -> None:
    """Refuse any output that would touch an input or another output, or replace a file without ``overwrite``
    (see the module docstring)."""
    outputs = ([destination] if destination is not None else []) + list(side_outputs)
    for output in outputs:
        for item in inputs:
            how = overlap(output.resolved, item.resolved)
            if how is not None:
                raise OutputError(f"{output.what} {output.path} {how} {item.what} ({item.path}): inputs are never "
                                  f"written; choose another {output.what}.")
    for k, side in enumerate(side_outputs):
        _check_side_output(side, overwrite)
        for other in outputs[: len(outputs) - len(side_outputs) + k]:
            how = overlap(side.resolved, other.resolved)
            if how is not None:
                raise OutputError(f"{side.what} {side.path} {how} the output of {other.what} ({other.path}): "
                                  f"choose another {side.what}.")


def through_link(path: Path) -> Path:
    """Where a write to ``path`` goes: the absolute path, or for a symbolic link, the path it points to (the
    link is kept and then points at the new file or folder, as a write through it would leave it)."""
    path = Path(path).expanduser().absolute()
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _check_side_output(side: Place, overwrite: bool) -> None:
    path = through_link(side.path)
    if path.is_dir():
        raise OutputError(f"{side.what} {side.path} is a folder: name a file.")
    folder = path.parent
    if not folder.is_dir():
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            raise OutputError(f"{side.what} {side.path}: {existing} is a file, not a folder; choose another "
                              f"{side.what}.")
        raise OutputError(f"{side.what} {side.path}: the folder {folder} does not exist; create it or choose another "
                          f"{side.what}.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{side.what} {side.path}: the folder {folder} is not writable; choose another {side.what}.")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{side.what} {side.path} exists and is read-only; choose another {side.what}.")
    if path.exists() and not overwrite and not _appended(side):
        raise OutputError(f"{side.what} {side.path} exists: pass --overwrite or choose another {side.what}.")


@contextlib.contextmanager
def staged_files(contents: Sequence[tuple[Path, bytes, str]], overwrite: bool = False) -> Iterator[None]:
    """Write each ``(path, content, what)`` to a temporary file beside ``path`` (a link's target) before the
    block, and rename them all into place when it ends without an exception (renames need no disk space); else
    remove them. The repaired model is written inside the block, so a side output that cannot be written stops
    the run before anything is in place, and once it is, the side outputs follow it. GitHub's step summary
    (:func:`appends`) is appended to instead, after the block."""
    staged: list[tuple[Path, Path]] = []
    appended: list[tuple[Path, bytes]] = []
    try:
        for path, content, what in contents:
            if what == "summary" and appends(path):
                appended.append((through_link(path), content))
            else:
                staged.append((_write_temporary(through_link(path), content, what), through_link(path)))
        yield
        for temporary, path in staged:
            if not overwrite and path.exists():
                raise OutputError(f"{path} appeared while writing: the model was written, this file was not; "
                                  "pass --overwrite or choose another name.")
            os.replace(temporary, path)
        for path, content in appended:
            _append(path, content)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)


def _append(path: Path, content: bytes) -> None:
    """Add ``content`` to the end of ``path`` (created if missing), a blank line before it when the file has
    text, in one write (``O_APPEND``: other writers' content stays whole)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        separator = b"\n" if os.fstat(descriptor).st_size else b""
        os.write(descriptor, separator + content)
    except OSError as error:
        raise OutputError(f"cannot append the summary to {path}: {error.strerror}.") from None
    finally:
        os.close(descriptor)


def _write_temporary(path: Path, content: bytes, what: str) -> Path:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        os.chmod(temporary, 0o666 & ~umask())
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(f"cannot write the {what} to {path}: {error.strerror}; nothing was written.") from None
    return Path(temporary)
