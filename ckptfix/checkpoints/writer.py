"""Write the recalibrated checkpoint: every tensor as it was except the new statistics, atomically.

The new checkpoint is written with ``SaveV2`` into a temporary folder beside the destination, together with a
copy of the ``.meta`` and a ``checkpoint`` state file, read back and checked (every other tensor byte-equal to
the input's, the statistics equal to the new values), and only then renamed into place. A crash leaves at
most a hidden ``.<name>.tmp-*`` folder, never a half-written output. Partitioned variables are written slice
by slice, with the layout their ``save_slice_info`` in the meta graph gives, so untouched files stay
byte-identical to what ``tf.train.Saver`` wrote.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ckptfix.checkpoints.locate import CheckpointFiles
from ckptfix.errors import CheckpointError, OutputError


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
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as error:
            raise OutputError(f"cannot create {parent}: {error.strerror}; choose another -o/--output.") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {parent}: choose a writable -o/--output.")
    return output_dir


def _read_all(prefix: Path) -> tuple[dict[str, np.ndarray], dict]:
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(prefix))
        dtypes = reader.get_variable_to_dtype_map()
        return {key: reader.get_tensor(key) for key in sorted(dtypes)}, dtypes
    except (tf.errors.OpError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {prefix}: {message}. Is it complete and uncorrupted?") from None


def _save(prefix: Path, tensors: Mapping[str, np.ndarray], dtypes: Mapping, layout: Mapping[str, list[TensorSlice]]):
    import tensorflow as tf

    names, specs, values = [], [], []
    for key, value in tensors.items():
        for part in layout.get(key, [TensorSlice("", (), ())]):
            names.append(key)
            specs.append(part.spec)
            values.append(tf.constant(part.take(value) if part.spec else value, dtype=dtypes[key]))
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=specs, tensors=values)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and all(x == y for x, y in zip(a.ravel(), b.ravel()))
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _verify(prefix: Path, expected: Mapping[str, np.ndarray]) -> None:
    written, _ = _read_all(prefix)
    wrong = sorted(key for key in expected if key not in written or not _same(written[key], expected[key]))
    if wrong or set(written) != set(expected):
        raise OutputError(f"the written checkpoint did not read back as expected ({', '.join(wrong[:3])}); nothing was kept.")


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
) -> Path:
    """Write ``source`` with ``new_values`` (checkpoint key -> float64 array) replaced, into ``output_dir``.

    Values are cast to each tensor's stored dtype. Returns the new checkpoint prefix (same basename as the
    input's). ``layout`` maps partitioned variables to their saved slices.
    """
    import tensorflow as tf

    output_dir = check_output_dir(source, output_dir, overwrite)
    tensors, dtypes = _read_all(source.prefix)
    missing = sorted(set(new_values) - set(tensors))
    if missing:
        raise CheckpointError(f"the checkpoint has no tensor {missing[0]}: the .meta does not match the checkpoint.")
    for key, value in new_values.items():
        stored = tensors[key]
        cast = tf.cast(tf.constant(np.asarray(value, np.float64)), dtypes[key]).numpy()
        tensors[key] = cast.reshape(stored.shape)

    basename = source.prefix.name
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    except OSError as error:
        raise OutputError(f"cannot write {output_dir}: {error.strerror or error}; nothing was written.") from None
    try:
        _save(staging / basename, tensors, dtypes, layout or {})
        if source.meta is not None:
            shutil.copyfile(source.meta, staging / (basename + ".meta"))
        _write_state_file(staging, basename)
        _verify(staging / basename, tensors)
        _move_into_place(staging, output_dir, overwrite)
    except OSError as error:
        raise OutputError(f"cannot write {output_dir}: {error.strerror or error}; nothing was written.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir / basename


def _move_into_place(staging: Path, output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists():
        if any(output_dir.iterdir()) and not overwrite:
            raise OutputError(f"output {output_dir} appeared while writing: pass --overwrite or choose another -o.")
        retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        os.rename(output_dir, retired / "previous")
        try:
            os.rename(staging, output_dir)
        except OSError:
            os.rename(retired / "previous", output_dir)
            raise
        finally:
            shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, output_dir)
