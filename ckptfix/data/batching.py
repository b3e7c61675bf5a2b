"""From streams of samples to the batches fed to the model: batch sizes, the last batch, bad data.

Every source yields :class:`Chunk` objects (values per input, and a name per sample: the file, the file and
row, or the record) and reports files it could not use to a :class:`SkipLog`. :func:`rebatch` turns chunks
into forward batches and checks that every value is finite.

**The last batch.** BN normalises each batch with its own statistics, so a tiny batch gives its layers, and
every layer after them, inputs unlike those of training (one sample through a dense BN layer is all zeros).
A last batch with fewer than half a batch of samples is therefore merged into the one before it (that
forward pass has up to 1.5 x ``batch_size`` samples); the caller gets a notice. Data smaller than one batch
is one batch. Whether a layer still sees a single value per channel is checked on the moments by the API.

**A share of the batches** (:class:`Share`: a ``TF_CONFIG`` worker's, batch i when i mod count == index).
Where the reading order is known before anything is decoded (files, array rows, records), the batches are laid
out on the positions of that order (:func:`batch_of`: position p is in batch ``min(p // batch_size, last)``,
the same batches as above when every sample is usable), and a reader reads and decodes only the positions of
its own batches (each :class:`Chunk` then carries its samples' batch). Other sources are read whole and the
batches of the others dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ckptfix.errors import DataError


@dataclass
class Chunk:
    """Consecutive samples of a source: ``values`` maps input name -> array with the same leading length."""

    values: dict[str, np.ndarray]
    names: Sequence[str]
    #: each sample's batch, when batches were assigned before reading (:class:`Share`)
    batches: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class Batch:
    """One forward pass: values per input, and the name of each sample (for error messages)."""

    values: dict[str, np.ndarray]
    names: list[str]
    index: int

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        first, last = self.names[0], self.names[-1]
        where = first if len(self.names) == 1 else f"{first} ... {last}"
        return f"batch {self.index} ({len(self.names)} samples: {where})"


#: how many skipped files a notice or the CLI names; the report keeps them all
SHOWN_SKIPS = 3


def name_few(names: Sequence[str], shown: int = SHOWN_SKIPS) -> str:
    """``a, b, c and 7 more``: the first ``shown`` names and the count of the rest."""
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


@dataclass
class SkipLog:
    """Files or records that could not be used. With ``strict`` the first one is an error.

    The first :data:`SHOWN_SKIPS` get one warning each (name and reason); :meth:`finish` then warns once
    with the count of the rest, so a folder of bad files does not flood the terminal. ``skipped`` has all.
    The warnings are held until :meth:`release` (the first usable sample): when every file is skipped, the one
    error that says so (naming the first and its ``first_reason``) is all the user reads.
    """

    strict: bool = False
    warn: Callable[[str], None] = lambda message: None
    skipped: list[str] = field(default_factory=list)
    count: int = 0
    first_reason: str = ""
    held: list[str] | None = field(default_factory=list)  # None once released

    def skip(self, name: str, reason: str, count: int = 1) -> None:
        if self.strict:
            raise DataError(f"cannot use {name}: {reason} (--strict): remove or repair it, or drop --strict to skip it.")
        self.skipped.append(name)
        self.count += count
        self.first_reason = self.first_reason or reason
        if len(self.skipped) <= SHOWN_SKIPS:
            self._say(f"skipped {name}: {reason}")

    def _say(self, message: str) -> None:
        if self.held is None:
            self.warn(message)
        else:
            self.held.append(message)

    def release(self) -> None:
        """Give the warnings held so far, and the later ones as they come."""
        held, self.held = self.held or [], None
        for message in held:
            self.warn(message)

    def finish(self) -> None:
        """Warn once about the skips not named one by one."""
        rest = len(self.skipped) - SHOWN_SKIPS
        if rest > 0:
            self._say(f"skipped {rest} more unreadable file(s) or record(s), {len(self.skipped)} in all "
                      "(the JSON report's skipped_files lists every one)")


def samples_in(batch) -> int:
    """How many samples a forward batch holds: an array, or a dict of arrays (one per input)."""
    return len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)


def first_samples(batch, count: int):
    """The first ``count`` samples of a forward batch (an array, or a dict of arrays, one per input)."""
    return {name: values[:count] for name, values in batch.items()} if isinstance(batch, dict) else batch[:count]


def _finite(batch: Batch) -> Batch:
    for name, values in batch.values.items():
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad = int(np.argwhere(~np.isfinite(values.reshape(len(values), -1)))[0][0])
            input_part = f" (input {name})" if len(batch.values) > 1 else ""
            raise DataError(
                f"calibration sample {batch.names[bad]}{input_part} contains NaN or Inf: clean or remove it."
            )
    return batch


def _concat(pieces: list[Chunk]) -> Chunk:
    if len(pieces) == 1:
        return pieces[0]
    keys = pieces[0].values.keys()
    return Chunk(
        {k: np.concatenate([p.values[k] for p in pieces]) for k in keys}, [n for p in pieces for n in p.names]
    )


def _split(chunk: Chunk, at: int) -> tuple[Chunk, Chunk]:
    head = Chunk({k: v[:at] for k, v in chunk.values.items()}, chunk.names[:at])
    tail = Chunk({k: v[at:] for k, v in chunk.values.items()}, chunk.names[at:])
    return head, tail


def _limited(chunks: Iterable[Chunk], num_samples: int | None) -> Iterator[Chunk]:
    seen = 0
    for chunk in chunks:
        if num_samples is not None and seen + len(chunk) >= num_samples:
            head, _ = _split(chunk, num_samples - seen)
            if len(head):
                yield head
            return
        if len(chunk):
            seen += len(chunk)
            yield chunk


def too_small(last: int, full: int) -> bool:
    """Is a last batch of ``last`` samples merged into a previous one of ``full``? (fewer than half)"""
    return 0 < last and 2 * last < full


class Rebatcher:
    """Chunks -> :class:`Batch` objects; ``fixed``: exactly ``batch_size`` each, else the chunks as given.

    In both modes a too-small last batch (:func:`too_small`) is merged into the previous one and recorded in
    ``merged`` as ``(last_size, merged_size)``.
    """

    def __init__(self, batch_size: int, num_samples: int | None, fixed: bool) -> None:
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.fixed = fixed
        self.merged: tuple[int, int] | None = None

    def __call__(self, chunks: Iterable[Chunk]) -> Iterator[Batch]:
        stream = _limited(chunks, self.num_samples)
        produced = (self._fixed if self.fixed else self._as_given)(stream)
        for index, chunk in enumerate(produced):
            yield _finite(Batch(chunk.values, list(chunk.names), index))

    def _fixed(self, stream: Iterator[Chunk]) -> Iterator[Chunk]:
        size = self.batch_size
        pending: list[Chunk] = []
        count = 0
        for chunk in stream:
            pending.append(chunk)
            count += len(chunk)
            while count >= 2 * size:  # what stays behind is at least one full batch
                head, tail = _split(_concat(pending), size)
                pending, count = [tail], count - size
                yield head
        if not count:
            return
        rest = _concat(pending)
        if count > size and too_small(count - size, size):
            self.merged = (count - size, count)
        elif count > size:
            head, rest = _split(rest, size)
            yield head
        yield rest

    def _as_given(self, stream: Iterator[Chunk]) -> Iterator[Chunk]:
        held: list[Chunk] = []  # the merge decision needs the next chunk: hold one back
        for chunk in stream:
            held.append(chunk)
            if len(held) > 2:
                yield held.pop(0)
        if len(held) == 2 and too_small(len(held[1]), len(held[0])):
            self.merged = (len(held[1]), len(held[0]) + len(held[1]))
            yield _concat(held)
        else:
            yield from held


def batch_count(total: int, batch_size: int) -> int:
    """How many batches ``total`` samples make: full ones, the rest one more unless :func:`too_small` (merged)."""
    full, rest = divmod(total, batch_size)
    if full == 0:
        return 1 if rest else 0
    return full + (1 if rest and not too_small(rest, batch_size) else 0)


def merged_rest(total: int, batch_size: int) -> tuple[int, int] | None:
    """``(last batch's size, merged size)`` when ``total`` samples end in a too-small batch merged, else None."""
    full, rest = divmod(total, batch_size)
    return (rest, batch_size + rest) if full and too_small(rest, batch_size) else None


def batch_of(positions: np.ndarray, total: int, batch_size: int) -> np.ndarray:
    """The batch of each position in a reading order of ``total`` samples: ``min(p // batch_size, last)``."""
    return np.minimum(np.asarray(positions) // batch_size, batch_count(total, batch_size) - 1)


@dataclass(frozen=True)
class Share:
    """The batches one reader yields: batch i when ``i mod count == index`` (rank ``index`` of ``count`` workers)."""

    index: int = 0
    count: int = 1

    def owns(self, batch: int) -> bool:
        return batch % self.count == self.index

    def positions(self, total: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, their batches)``: the positions of a reading order of ``total`` samples in this share's
        batches, in order."""
        batches = batch_of(np.arange(total), total, batch_size)
        mine = batches % self.count == self.index
        return np.flatnonzero(mine), batches[mine]


def with_batches(chunks: Iterable[Chunk], batches: np.ndarray) -> Iterator[Chunk]:
    """``chunks`` of consecutive samples (none dropped) with each sample's batch from ``batches``, in order."""
    start = 0
    for chunk in chunks:
        yield Chunk(chunk.values, chunk.names, batches[start : start + len(chunk)])
        start += len(chunk)


def assigned_batches(chunks: Iterable[Chunk]) -> Iterator[Batch]:
    """Chunks whose samples carry their batch (assigned before reading, in order) -> one :class:`Batch` per
    batch, numbered as assigned; a sample that could not be read leaves its batch one short."""
    pending: list[Chunk] = []
    current = None
    for chunk in chunks:
        ids = np.asarray(chunk.batches)
        cuts = [0, *(np.flatnonzero(np.diff(ids)) + 1), len(ids)]
        for start, stop in zip(cuts[:-1], cuts[1:]):
            if start == stop:
                continue
            if current is not None and ids[start] != current:
                whole = _concat(pending)
                yield _finite(Batch(whole.values, list(whole.names), current))
                pending = []
            current = int(ids[start])
            pending.append(Chunk({k: v[start:stop] for k, v in chunk.values.items()}, chunk.names[start:stop]))
    if pending:
        whole = _concat(pending)
        yield _finite(Batch(whole.values, list(whole.names), current))


def take_samples(batch, rows: np.ndarray):
    """The samples ``rows`` of a forward batch (an array, or a dict of arrays)."""
    return {name: values[rows] for name, values in batch.items()} if isinstance(batch, dict) else batch[rows]


class Reservoir:
    """Up to ``size`` samples drawn uniformly from a stream of batches of unknown length (reservoir sampling,
    Vitter's algorithm R over the samples, seeded), so that the samples kept for the agreement check represent
    the whole stream -- every class of a stream ordered by class, in its proportions -- not its beginning.
    Batches are arrays, or dicts of arrays (one per input)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.kept = None  # array, or dict of arrays, of up to ``size`` samples
        self.count = 0  # samples kept
        self._seen = 0
        self._rng = np.random.default_rng(seed)

    def offer(self, batch) -> None:
        n = samples_in(batch)
        if self.size <= 0 or n == 0:
            return
        if self.kept is None:
            arrays = batch if isinstance(batch, dict) else {None: batch}
            self._store = {name: np.empty((self.size, *values.shape[1:]), values.dtype) for name, values in arrays.items()}
        arrays = batch if isinstance(batch, dict) else {None: batch}
        positions = self._seen + np.arange(n)
        slots = np.where(positions < self.size, positions, self._rng.integers(0, positions + 1))
        taken = slots < self.size
        for name, values in arrays.items():
            self._store[name][slots[taken]] = np.asarray(values)[taken]
        self._seen += n
        self.count = min(self._seen, self.size)
        stored = {name: values[:self.count] for name, values in self._store.items()}
        self.kept = stored if isinstance(batch, dict) else stored[None]

    def mixed(self, batch_size: int, exact: bool, seed: int) -> list:
        """The kept samples shuffled and cut into batches: of exactly ``batch_size`` samples when ``exact`` (a
        graph input with a fixed batch dimension; the remainder dropped, unless that leaves none), else into
        ``round(n / batch_size)`` batches of near-equal size (at least one)."""
        if self.kept is None:
            return []
        order = np.random.default_rng(seed).permutation(self.count)
        if exact:
            whole = self.count // batch_size * batch_size if self.count >= batch_size else self.count
            return [take_samples(self.kept, order[start:start + batch_size]) for start in range(0, whole, batch_size)]
        parts = max(1, round(self.count / batch_size))
        return [take_samples(self.kept, rows) for rows in np.array_split(order, parts)]


#: samples vary across the data by less than this fraction of their own contrast: near-identical
NEAR_IDENTICAL = 0.01


class Variety:
    """How much the samples differ from each other, against how much one sample varies within itself.

    The first input's samples are read as ``(positions, channels)`` (the last axis the channels, a sample of
    rank 1 one position). Per value ``(p, c)`` the mean ``m_pc`` and variance ``v_pc`` across samples are pooled in
    float64 (Chan's merge, batch by batch). ``spread = mean_pc v_pc`` is how much samples differ; ``contrast =
    mean_c var_p m_pc`` how much the typical sample varies across its positions, channel by channel (so that
    channels of different offsets or scales, or tabular features, are not taken for image structure);
    ``within`` the same for each sample, averaged over the samples. The samples are *identical* when each equals
    the first bit for bit; with two positions or more, *near-identical* when ``spread < NEAR_IDENTICAL *
    (spread + contrast)`` (one image with faint noise added: statistics of one input again) and *flat* when
    ``within < NEAR_IDENTICAL * (within + spread)`` (blank or constant images). Samples of one position
    (feature vectors) are never near-identical or flat: their values' offsets say nothing of their variety.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean = self._m2 = None
        self._within = 0.0  # sum over samples of each one's variance across positions, averaged over channels
        self._first = None  # the first sample (every input), until one differs from it
        self.varied = False

    def see(self, batch) -> None:
        arrays = [np.asarray(v) for v in (batch.values() if isinstance(batch, dict) else [batch])]
        if not self.varied:
            self._first = self._first or [a[:1].copy() for a in arrays]
            self.varied = any(not np.array_equal(a, np.broadcast_to(f, a.shape)) for a, f in zip(arrays, self._first))
        values = arrays[0]
        channels = values.shape[-1] if values.ndim > 2 else (values.shape[1] if values.ndim == 2 else 1)
        x = np.asarray(values, np.float64).reshape(len(values), -1, channels)
        n, mean = len(x), x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        self._within += float(x.var(axis=1).mean(axis=-1).sum())
        if self._mean is None:
            self.count, self._mean, self._m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def _positions(self) -> int:
        return 0 if self._mean is None else self._mean.shape[0]

    @property
    def spread(self) -> float:
        return 0.0 if self._mean is None else float(np.mean(self._m2) / self.count)

    @property
    def contrast(self) -> float:
        return 0.0 if self._mean is None else float(np.mean(np.var(self._mean, axis=0)))

    @property
    def within(self) -> float:
        return self._within / max(self.count, 1)

    @property
    def identical(self) -> bool:
        """Every sample equal to the first, bit for bit (one sample included)."""
        return not self.varied

    @property
    def near_identical(self) -> bool:
        return (self._positions > 1 and not self.identical
                and self.spread < NEAR_IDENTICAL * (self.spread + self.contrast))

    @property
    def flat(self) -> bool:
        return self._positions > 1 and self.within < NEAR_IDENTICAL * (self.within + self.spread)
