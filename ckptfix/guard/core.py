"""Did the BN moving statistics move while the weights moved? The decision every guard shares (numpy only).

A guard reads, every ``every_n_steps`` training steps, each watched BN layer's moving mean and variance and a few
of the weights training updates (:class:`Reading`), and compares the read with the one before it
(:class:`MovementCheck`). Definitions:

* **moved**: at least one element's bits changed between the two reads (``float32`` bit patterns compared, not
  values within a tolerance). A layer's statistics moved when any channel of its moving mean or moving variance
  moved; the weights moved when any element of the watched weights moved.
* **window**: the steps between two reads. Where the weights did not move (learning rate 0, a gradient-
  accumulation step, runs that only evaluate) it gives no verdict and the next read is compared with the same
  earlier one, so the window grows until training moved the weights.
* **not updated**: the weights moved over the window while a watched layer's statistics did not. The guard then
  raises :class:`~ckptfix.errors.StatisticsNotUpdated` (or warns, with ``warn_only``) at the end of the step
  that closed the window: within ``every_n_steps`` steps of the start when the first steps train.

Why bits, and why that is not a false alarm when statistics legitimately move little: each step of a correct
update sets ``moving <- moving + (1 - momentum) * (batch - moving)``. In float32 that leaves ``moving``'s bits
unchanged only when ``|(1 - momentum) * (batch - moving)|`` is below half a unit in the last place of
``moving``, i.e. when the batch statistic is within ``2**-24 / (1 - momentum)`` (relative) of the moving one:
with momentum 0.9997, 0.02 %. A layer stands still only if that holds for every channel of both statistics at
every step of the window -- while batch-to-batch sampling noise alone moves a channel's batch variance by about
``sqrt(2 / n)`` (4 % for n = 1,000 values per channel). Momentum 0.9997 after ten steps therefore always moves
the bits; a loop that never assigns the update, and ``momentum = 1.0`` (``moving * 1 + batch * 0`` is
``moving`` exactly), change none. Left to the user's ``exclude``: a layer whose every channel is constant (its
variance decayed to exactly 0) and a layer in training mode by design of a graph that never updates it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

#: how many of the smallest weights training updates a guard reads to see that a step trained
WATCHED_WEIGHTS = 8
DEFAULT_EVERY_N_STEPS = 10


@dataclass(frozen=True)
class Reading:
    """One read at ``step`` (training steps run so far): each watched layer's statistics arrays, the watched
    weights' arrays."""

    step: int
    statistics: Mapping[str, Sequence[np.ndarray]]
    weights: Sequence[np.ndarray]


@dataclass(frozen=True)
class Verdict:
    """What one window showed: from ``start`` to ``end`` (steps), whether the weights moved, and the watched
    layers whose statistics did not move while they did (``not_updated``, in the guard's layer order)."""

    start: int
    end: int
    weights_moved: bool
    not_updated: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.weights_moved and bool(self.not_updated)


def moved(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether any element's bits differ (``-0.0`` vs ``0.0`` counts; a NaN that stays the same NaN does not)."""
    before, after = np.ascontiguousarray(before), np.ascontiguousarray(after)
    if before.shape != after.shape or before.dtype != after.dtype:
        return True
    return before.tobytes() != after.tobytes()


def smallest(sizes: Sequence[int], count: int = WATCHED_WEIGHTS) -> list[int]:
    """Indices of the ``count`` smallest of ``sizes`` (the cheapest weights to read), in their original order."""
    return sorted(sorted(range(len(sizes)), key=lambda i: (sizes[i], i))[:count])


def excluded(names: Sequence[str], exclude: str | None) -> list[str]:
    """``names`` less those the ``exclude`` regex matches (``re.search``, as ``--exclude``)."""
    if exclude is None:
        return list(names)
    pattern = re.compile(exclude)
    return [name for name in names if not pattern.search(name)]


class MovementCheck:
    """The window logic of the module docstring, fed one :class:`Reading` at a time."""

    def __init__(self, every_n_steps: int = DEFAULT_EVERY_N_STEPS) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a whole number of steps, at least 1 (got {every_n_steps!r})")
        self.every_n_steps = every_n_steps
        self._earlier: Reading | None = None
        self._last_read: int | None = None

    def due(self, step: int) -> bool:
        """Whether to read after ``step`` steps: the first read, then every ``every_n_steps`` steps."""
        return self._last_read is None or step - self._last_read >= self.every_n_steps

    def observe(self, reading: Reading) -> Verdict | None:
        """The verdict of the window ``reading`` closes (None for the first read). The earlier read is kept
        while the weights have not moved since it."""
        earlier, self._last_read = self._earlier, reading.step
        if earlier is None:
            self._earlier = reading
            return None
        weights_moved = any(moved(a, b) for a, b in zip(earlier.weights, reading.weights))
        if not weights_moved:
            return Verdict(earlier.step, reading.step, weights_moved=False)
        self._earlier = reading
        not_updated, updated = [], []
        for name, arrays in reading.statistics.items():
            before = earlier.statistics.get(name)
            if before is None:
                continue
            (updated if any(moved(a, b) for a, b in zip(before, arrays)) else not_updated).append(name)
        return Verdict(earlier.step, reading.step, True, not_updated, updated)


def failure_message(verdict: Verdict, total: int, reason: str, fix: str) -> str:
    """What a guard says when ``verdict`` failed: the layers, the steps, why, and the fix (``fix`` one sentence)."""
    from ckptfix.data.batching import name_few

    count = len(verdict.not_updated)
    return (f"ckptfix guard: the moving statistics of {count} of {total} BN layers ({name_few(verdict.not_updated)}) "
            f"did not change over training steps {verdict.start}-{verdict.end} while the weights did: {reason}, so "
            f"every checkpoint this training writes would collapse in inference mode.\nFix: {fix}")


class Guard:
    """What every guard does around a training loop: count steps, read when due, and on a failed window raise
    :class:`~ckptfix.errors.StatisticsNotUpdated` (``warn_only``: warn
    :class:`~ckptfix.errors.StatisticsNotUpdatedWarning` once per set of layers, and go on).

    ``read(step)`` returns a :class:`Reading`; ``explain(verdict)`` the message of a failed one.
    """

    def __init__(self, every_n_steps: int = DEFAULT_EVERY_N_STEPS, warn_only: bool = False) -> None:
        self.check = MovementCheck(every_n_steps)
        self.warn_only = warn_only
        self.step = 0
        self.verdicts: list[Verdict] = []
        self._warned: set[tuple[str, ...]] = set()

    def start(self, read) -> None:
        """The first read, before the first step (or at the step the guard joins a running loop)."""
        self.check = MovementCheck(self.check.every_n_steps)
        self.check.observe(read(self.step))

    def after_step(self, read, explain) -> Verdict | None:
        """One more step ran: read when due, and fail or warn when the window shows the statistics stood still."""
        self.step += 1
        if not self.check.due(self.step):
            return None
        verdict = self.check.observe(read(self.step))
        if verdict is not None:
            self.verdicts.append(verdict)
            if verdict.failed:
                self.fail(explain(verdict), tuple(verdict.not_updated))
        return verdict

    def fail(self, message: str, key: tuple[str, ...] = ()) -> None:
        """Stop training with ``message`` (raise), or warn once per ``key`` with ``warn_only``."""
        from ckptfix.errors import StatisticsNotUpdated, StatisticsNotUpdatedWarning

        if not self.warn_only:
            raise StatisticsNotUpdated(message)
        if key not in self._warned:
            self._warned.add(key)
            import warnings

            warnings.warn(message, StatisticsNotUpdatedWarning, stacklevel=4)  # the caller of the guard's step


class Guarded:
    """What a guard shows of its :class:`Guard` (``self._guard``): the verdicts so far and the steps counted."""

    _guard: Guard

    @property
    def verdicts(self) -> list[Verdict]:
        """Every window's verdict so far."""
        return self._guard.verdicts

    @property
    def steps(self) -> int:
        """Training steps counted so far."""
        return self._guard.step
