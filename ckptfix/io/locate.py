"""Resolve what the user typed as CKPT to a checkpoint prefix and its ``.meta`` graph.

Accepted: a prefix (``train/model.ckpt-1000``), a directory whose ``checkpoint`` state file names the latest
prefix, or any one file of the prefix (``.index``, ``.meta``, ``.data-00000-of-00001``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ckptfix.errors import CheckpointError, GraphError

_SUFFIX = re.compile(r"\.(index|meta|data-\d+-of-\d+)$")


@dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint prefix, its files on disk and the graph it was saved from (None: the graph is built by
    ``--model``, or thawed from a frozen GraphDef)."""

    prefix: Path
    meta: Path | None

    @property
    def files(self) -> list[Path]:
        """Every file of the prefix (``.index`` and ``.data-*`` shards), sorted."""
        return sorted(self.prefix.parent.glob(self.prefix.name + ".data-*")) + [self.index]

    @property
    def index(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".index")


_STATE_LINE = re.compile(r'^model_checkpoint_path:\s*"(.*)"\s*$', re.MULTILINE)
STATE_FILE = "checkpoint"


def read_state_file(folder: Path) -> Path:
    """The prefix ``folder``'s ``checkpoint`` state file names, looked up inside that folder only.

    The one trust rule for state files (TF1 folders and TF2 object-based checkpoint folders alike): Saver and
    ``tf.train.CheckpointManager`` write absolute paths into the state file; they go stale when a folder is
    copied, and a crafted state file could point anywhere. So only the basename of the named prefix is used,
    inside ``folder``. Raises :class:`CheckpointError` naming the fix when there is no state file, it names
    nothing, or the named prefix has no ``.index`` in ``folder``.
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
    prefix = folder / Path(found.group(1).replace("\\", "/")).name
    if not prefix.with_name(prefix.name + ".index").is_file():
        raise CheckpointError(
            f"the 'checkpoint' state file in {folder} names {found.group(1)}, which is not in that folder: "
            "pass the prefix explicitly."
        )
    return prefix


def write_state_file(folder: Path, basename: str) -> None:
    """A ``checkpoint`` state file in ``folder`` naming the prefix ``basename`` (relative: the folder can move)."""
    (Path(folder) / STATE_FILE).write_text(
        f'model_checkpoint_path: "{basename}"\nall_model_checkpoint_paths: "{basename}"\n'
    )


def prefix_named_by(path: Path) -> Path:
    """The checkpoint prefix ``path`` names: ``path`` itself, or the prefix of one of its files (``.index``,
    ``.meta``, ``.data-*``)."""
    return path.with_name(_SUFFIX.sub("", path.name))


def locate_checkpoint(checkpoint: str | Path, meta: str | Path | None = None, *, need_meta: bool = True) -> CheckpointFiles:
    """Find the prefix and ``.meta`` for ``checkpoint``; raise :class:`CheckpointError` naming the fix.

    ``need_meta=False`` (the graph comes from ``--model``): the ``.meta`` is not looked for (``meta`` None).
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        prefix = read_state_file(path)
    else:
        prefix = prefix_named_by(path)
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file():
        if not prefix.parent.exists() or not any(prefix.parent.glob(prefix.name + "*")):
            raise CheckpointError(f"no checkpoint at {checkpoint}: pass a checkpoint prefix, directory or file.")
        raise CheckpointError(f"{index} is missing: pass the prefix of a complete TensorFlow checkpoint.")
    if not any(prefix.parent.glob(prefix.name + ".data-*")):
        raise CheckpointError(f"no .data shard beside {index}: the checkpoint is incomplete; copy all its files.")
    if not need_meta:
        return CheckpointFiles(prefix=prefix.absolute(), meta=None)
    meta_path = Path(meta).expanduser() if meta is not None else prefix.with_name(prefix.name + ".meta")
    if not meta_path.is_file():
        if meta is not None:
            raise GraphError(f"--meta {meta}: no such file.")
        raise GraphError(
            f"no .meta graph beside {prefix.name}: pass --meta PATH (the graph the checkpoint was saved from), "
            "or --model package.module:function (the function that builds it)."
        )
    return CheckpointFiles(prefix=prefix.absolute(), meta=meta_path.absolute())
