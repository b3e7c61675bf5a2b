"""Resolve what the user typed as CKPT to a checkpoint prefix and its ``.meta`` graph.

Accepted: a prefix (``train/model.ckpt-1000``), a directory whose ``checkpoint`` state file names the latest
prefix, or any one file of the prefix (``.index``, ``.meta``, ``.data-00000-of-00001``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ckptfix.errors import CheckpointError, GraphError
from ckptfix.io.bundle_index import shard_lengths

_SUFFIX = re.compile(r"\.(index|meta|data-\d+-of-\d+)$")


class Prefix(os.PathLike):
    """A checkpoint prefix: a folder and a basename, which may be empty.

    ``Saver.save(sess, "dir/")`` writes ``dir/.index``, ``dir/.data-*`` and ``dir/.meta``: the prefix is the
    string ``"dir/"``, which a :class:`~pathlib.Path` cannot hold (it drops the trailing ``/``). Its files are the
    prefix string plus a suffix; ``str()`` / ``os.fspath()`` give the prefix string TensorFlow takes. Otherwise it
    reads like a Path (``name``, ``parent``, ``with_name``) and equals the Path of the same prefix.
    """

    def __init__(self, folder: str | os.PathLike, name: str) -> None:
        self.parent, self.name = Path(folder), name

    @classmethod
    def of(cls, prefix: str | os.PathLike) -> "Prefix":
        """The prefix a string or path names (``"dir/"``: basename empty)."""
        if isinstance(prefix, Prefix):
            return prefix
        text = os.fspath(prefix)
        folder, separator, name = text.replace("\\", "/").rpartition("/")
        return cls(folder or separator or ".", name)

    def file(self, suffix: str) -> Path:
        """The prefix's file with ``suffix`` (``.index``, ``.meta``, ``.data-00000-of-00001``)."""
        return self.parent / (self.name + suffix)

    def with_name(self, name: str) -> Path:
        return self.parent / name

    def absolute(self) -> "Prefix":
        """The prefix with an absolute folder; a ``..`` in it resolved as the file system does (through a
        symbolic link, ``link/..`` is the link target's parent, not the link's; TensorFlow's readers clean ``..``
        away as text and would look elsewhere)."""
        if ".." in self.parent.parts:
            return Prefix(Path(os.path.realpath(self.parent)), self.name)
        return Prefix(self.parent.absolute(), self.name)

    def __fspath__(self) -> str:
        return os.path.join(str(self.parent), self.name)

    __str__ = __fspath__

    def __repr__(self) -> str:
        return f"Prefix({str(self)!r})"

    def __eq__(self, other) -> bool:
        if isinstance(other, (Prefix, Path)):
            return (self.parent, self.name) == ((other.parent, other.name) if isinstance(other, Prefix) else
                                                (other.parent, other.name) if other.name else (None, None))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.parent, self.name))


@dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint prefix, its files on disk and the graph it was saved from (None: the graph is built by
    ``--model``, or thawed from a frozen GraphDef). ``notice``: how the prefix was chosen when the user could
    not expect it (a state file naming another machine's path), for the run's notices."""

    prefix: Prefix
    meta: Path | None
    notice: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", Prefix.of(self.prefix))

    @property
    def files(self) -> list[Path]:
        """Every file of the prefix (``.index`` and ``.data-*`` shards), sorted."""
        return _data_shards(self.prefix) + [self.index]

    @property
    def index(self) -> Path:
        return self.prefix.file(".index")


def _data_shards(prefix: Prefix) -> list[Path]:
    # not glob: a pattern starting with "*" skips dot files, and the empty basename's files all start with "."
    return sorted(path for path in prefix.parent.iterdir() if path.name.startswith(prefix.name + ".data-")) \
        if prefix.parent.is_dir() else []


_STATE_LINE = re.compile(r'^model_checkpoint_path:\s*"(.*)"\s*$', re.MULTILINE)
STATE_FILE = "checkpoint"


def prefixes_in(folder: Path) -> list[Prefix]:
    """Every checkpoint prefix in ``folder`` (one per ``.index`` file), sorted."""
    return sorted((Prefix(folder, path.name[: -len(".index")]) for path in Path(folder).iterdir()
                   if path.name.endswith(".index") and path.is_file()), key=str)


def read_state_file(folder: Path) -> tuple[Prefix, str | None]:
    """The prefix ``folder``'s ``checkpoint`` state file names, looked up inside that folder only, and a notice
    saying which checkpoint was used when the named prefix does not exist here (None when it does).

    The one trust rule for state files (TF1 folders and TF2 object-based checkpoint folders alike): Saver and
    ``tf.train.CheckpointManager`` write absolute paths into the state file; they go stale when a folder is
    copied, and a crafted state file could point anywhere. So only the basename of the named prefix is used,
    inside ``folder`` (``".../run/"`` names the empty basename). When that is not in ``folder`` either and the
    named prefix does not exist here (a folder copied from another machine), the folder's only checkpoint is
    used; a named prefix that exists outside ``folder`` is never used.
    Raises :class:`CheckpointError` naming the fix when there is no state file, it names nothing, or
    neither rule finds the prefix (the error lists the folder's checkpoints).
    """
    folder = Path(folder)
    state = folder / STATE_FILE
    if not state.is_file():
        raise CheckpointError(
            f"{folder} has no 'checkpoint' state file: pass the checkpoint prefix instead "
            f"(e.g. {folder}/model.ckpt-1000)."
        )
    found = _STATE_LINE.search(state.read_text(errors="replace"))
    if found is None:
        raise CheckpointError(f"the 'checkpoint' state file in {folder} names no checkpoint: pass the prefix explicitly.")
    named = Prefix.of(found.group(1))
    as_given = named if os.path.isabs(named) else Prefix(folder / named.parent, named.name)
    elsewhere = not as_given.file(".index").is_file()  # nothing at the named path here: another machine's path
    inside, candidates = Prefix(folder, named.name), prefixes_in(folder)
    if inside.file(".index").is_file():
        chosen, why = inside, "the folder's checkpoint of that basename"
    elif elsewhere and len(candidates) == 1:
        chosen, why = candidates[0], "the folder's only checkpoint"
    else:
        listed = ", ".join(str(candidate) for candidate in candidates[:5]) + (" ..." if len(candidates) > 5 else "")
        raise CheckpointError(
            f"the 'checkpoint' state file in {folder} names {found.group(1)}, which is not in that folder: "
            "pass the prefix explicitly" + (f" (the folder holds {listed})." if candidates else ".")
        )
    what = "is not a checkpoint (no .index file)" if Path(os.fspath(as_given)).exists() else "does not exist here"
    notice = None if not elsewhere else (
        f"the 'checkpoint' state file in {folder} names {found.group(1)}, which {what}: using {chosen}, {why}")
    return chosen, notice


def write_state_file(folder: Path, basename: str) -> None:
    """A ``checkpoint`` state file in ``folder`` naming the prefix ``basename`` (relative: the folder can move).

    The empty basename is written ``./`` (``tf.train.latest_checkpoint`` takes an empty path for no checkpoint).
    """
    basename = basename or "./"
    (Path(folder) / STATE_FILE).write_text(
        f'model_checkpoint_path: "{basename}"\nall_model_checkpoint_paths: "{basename}"\n'
    )


def check_shard_lengths(prefix: Prefix) -> None:
    """Raise :class:`CheckpointError` naming the fix when a ``.data`` shard is missing or shorter than the
    ``.index`` says (a truncated copy or download); nothing when the index cannot be parsed (TensorFlow's
    reader reports that)."""
    lengths = shard_lengths(prefix.file(".index"))
    shards = {int(found.group(1)): path for path in _data_shards(prefix)
              if (found := re.fullmatch(r"\.data-(\d+)-of-\d+", path.name[len(prefix.name):]))}
    for shard, needed in sorted((lengths or {}).items()):
        path = shards.get(shard)
        if path is None:
            raise CheckpointError(f"shard {shard} of checkpoint {prefix} is missing: restore the checkpoint from a "
                                  "good copy (copy all its .data files).")
        if path.stat().st_size < needed:
            raise CheckpointError(f"{path} is truncated ({path.stat().st_size} of {needed} bytes): restore the "
                                  "checkpoint from a good copy.")


def prefix_named_by(path: str | os.PathLike) -> Prefix:
    """The checkpoint prefix ``path`` names: ``path`` itself, or the prefix of one of its files (``.index``,
    ``.meta``, ``.data-*``). ``dir/.index`` names the prefix ``dir/`` (basename empty)."""
    prefix = Prefix.of(path)
    return Prefix(prefix.parent, _SUFFIX.sub("", prefix.name))


def locate_checkpoint(checkpoint: str | Path, meta: str | Path | None = None, *, need_meta: bool = True) -> CheckpointFiles:
    """Find the prefix and ``.meta`` for ``checkpoint``; raise :class:`CheckpointError` naming the fix.

    A folder is read through its state file (:func:`read_state_file`); without one, a folder holding
    ``.index`` is the prefix ``folder/`` (saved with a prefix ending in ``/``), and so is ``folder/checkpoint``.
    ``need_meta=False`` (the graph comes from ``--model``): the ``.meta`` is not looked for (``meta`` None).
    """
    path = Path(checkpoint).expanduser()
    notice = None
    if path.name == STATE_FILE and path.is_file() and not Prefix(path.parent, STATE_FILE).file(".index").is_file():
        path = path.parent
    if path.is_dir():
        if not (path / STATE_FILE).is_file() and Prefix(path, "").file(".index").is_file():
            prefix = Prefix(path, "")
        else:
            prefix, notice = read_state_file(path)
    else:
        prefix = prefix_named_by(os.path.expanduser(os.fspath(checkpoint)))
    index = prefix.file(".index")
    if not index.is_file():
        if not prefix.parent.is_dir() or not any(p.name.startswith(prefix.name) for p in prefix.parent.iterdir()):
            raise CheckpointError(f"no checkpoint at {checkpoint}: pass a checkpoint prefix, directory or file.")
        raise CheckpointError(f"{index} is missing: pass the prefix of a complete TensorFlow checkpoint.")
    if not _data_shards(prefix):
        raise CheckpointError(f"no .data shard beside {index}: the checkpoint is incomplete; copy all its files.")
    check_shard_lengths(prefix)
    if not need_meta:
        return CheckpointFiles(prefix=prefix.absolute(), meta=None, notice=notice)
    meta_path = Path(meta).expanduser() if meta is not None else prefix.file(".meta")
    if not meta_path.is_file():
        if meta is not None:
            raise GraphError(f"--meta {meta}: no such file.")
        raise GraphError(
            f"no .meta graph beside {prefix.name or str(prefix)}: pass --meta PATH (the graph the checkpoint was saved "
            "from), or --model package.module:function (the function that builds it)."
        )
    return CheckpointFiles(prefix=prefix.absolute(), meta=meta_path.absolute(), notice=notice)
