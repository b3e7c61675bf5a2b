"""What the model takes: one :class:`InputSpec` per fed tensor, and the checks of samples against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ckptfix.errors import DataError


@dataclass(frozen=True)
class InputSpec:
    """A model input: tensor name (``images:0``), static shape with ``None`` for unknown dims (or None), dtype, and
    ``aliases``: other names the data may key it by (a Keras input: its tensor's name, its position ``arr_0``, ``0``)."""

    name: str
    shape: tuple | None
    dtype: np.dtype
    aliases: tuple[str, ...] = ()

    @property
    def sample_shape(self) -> tuple | None:
        return None if self.shape is None else tuple(self.shape[1:])


@dataclass(frozen=True)
class FixedBatch:
    """A batch size the model's own operations fix: ``size`` samples per batch at ``input``, because of ``reason``
    (the operation that needs it, e.g. ``Reshape flat reshapes to [32, -1]``). A declared batch dimension alone
    (a placeholder saved as ``[32, ...]``) is freed and fixes nothing (:mod:`ckptfix.graph.model`)."""

    size: int
    input: str
    reason: str


def ghost_batch_error(layer: str, virtual: int, what: str, fix: str | None = None) -> DataError:
    """The error for batches that ghost BN (``virtual_batch_size=V``, tf.compat.v1 layers and tf_keras) cannot split into
    its groups of V, as training could not: ``what`` names them (``batches of 20 samples``), ``fix`` what to pass."""
    fix = fix or (f"pass a --batch-size that is a multiple of {virtual} (the training batch size) and a number of "
                  f"samples that is a multiple of {virtual} (--num-samples)")
    return DataError(f"BN layer {layer} is ghost batch norm (virtual_batch_size={virtual}) and {what} do not split into "
                     f"its groups of {virtual}, as in training: {fix}.")


def show_shape(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def fits(sample_shape, spec: InputSpec) -> bool:
    expected = spec.sample_shape
    if expected is None:
        return True
    return len(sample_shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, sample_shape))


def check_sample_shape(sample_shape, spec: InputSpec, source: str) -> None:
    """DataError naming both shapes and the source when samples cannot be fed to ``spec``."""
    if not fits(tuple(sample_shape), spec):
        raise DataError(
            f"samples in {source} have shape {tuple(int(d) for d in sample_shape)} but the model input "
            f"{spec.name} takes {show_shape(spec.sample_shape)}: resize or re-export them."
        )


def input_aliases(name: str) -> set[str]:
    """The names a user may key an input by: ``scope/images:0``, ``scope/images``, ``images``."""
    node = name.split(":")[0]
    return {name, node, node.split("/")[-1]}


def key_for_input(keys: Iterable, name: str, aliases: Iterable[str] = ()) -> str | None:
    """The one key among ``keys`` naming the input ``name`` (or one of its ``aliases``), or None."""
    names = input_aliases(name) | set(aliases)
    matches = [k for k in keys if str(k) in names]
    return matches[0] if len(matches) == 1 else None


def positional_aliases(k: int) -> tuple[str, ...]:
    """The names of input ``k`` by position: ``arr_k`` (what ``np.savez(path, x0, x1)`` names arrays) and ``k``."""
    return f"arr_{k}", str(k)


def keys_for_inputs(keys: Iterable, inputs: Sequence[InputSpec], where: str) -> dict[str, str]:
    """Input name -> its key among ``keys``, for a model with several inputs; keys naming no input (labels)
    are ignored. DataError naming the fix for a missing input or a key that names two inputs."""
    keys = list(keys)
    found = {spec.name: key_for_input(keys, spec.name, spec.aliases) for spec in inputs}
    missing = [name for name, key in found.items() if key is None]
    if missing:
        by_position = all(positional_aliases(k)[0] in spec.aliases for k, spec in enumerate(inputs))
        positions = ", ".join(positional_aliases(k)[0] for k in range(len(inputs)))
        order = f", or give them in the model's input order as np.savez names them ({positions})" if by_position else ""
        raise DataError(
            f"{where} has no array for the model's input {', '.join(missing)}: its arrays are named "
            f"{', '.join(map(str, keys))}. Name one array after each input ({', '.join(spec.name for spec in inputs)}){order}."
        )
    shared = {key for key in found.values() if list(found.values()).count(key) > 1}
    if shared:
        names = [name for name, key in found.items() if key in shared]
        raise DataError(
            f"{where}: key {', '.join(sorted(map(str, shared)))} names several inputs ({', '.join(names)}): "
            "key each by its full tensor name."
        )
    return found
