"""Several local devices: which ones (``--devices``), and whole batches run on one session per device.

A batch is the BN batch, so it is never split: each device runs whole batches on its own copy of the
model's forward pass (one :class:`~ckptfix.sources.base.Session` opened with ``device=``). :class:`DevicePool`
hands batches to the first free device from threads (TensorFlow releases the GIL while a graph runs) while the
calling thread loads the next ones, and gives the results back **in batch order**: the pipeline pools them in
that order, so the statistics are those of a one-device run whatever the number of devices.
"""

from __future__ import annotations

import collections
import queue
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from ckptfix.errors import CkptfixError, OptionError

_NAME = re.compile(r"^/?(?:device:)?(CPU|GPU|TPU):(\d+)$", re.IGNORECASE)


def parse_devices(value) -> str | int | tuple[str, ...] | None:
    """``--devices`` normalised: None (the default), ``"all"``, a count >= 1, or names like ``("/GPU:0", "/GPU:1")``.

    Takes ``"all"``, an int or a digit string, ``"/GPU:0,/GPU:1"`` (``GPU:0`` and ``/device:GPU:0`` too), or a
    list of names. Raises CkptfixError on anything else (no TensorFlow needed).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None if value is None else "all"
    if isinstance(value, bool):
        raise OptionError(f"--devices must be all, a count or device names like /GPU:0,/GPU:1 (got {value}).")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        count = int(value)
        if count < 1:
            raise OptionError(f"--devices must be at least 1 (got {count}).")
        return count
    parts = value.split(",") if isinstance(value, str) else [p for item in value for p in str(item).split(",")]
    names = []
    for part in (p.strip() for p in parts):
        match = _NAME.match(part)
        if match is None:
            raise OptionError(f"--devices: {part!r} is not a device name: use all, a count, or names like /GPU:0,/GPU:1.")
        name = f"/{match.group(1).upper()}:{int(match.group(2))}"
        if name in names:
            raise OptionError(f"--devices names {name} twice: name each device once.")
        names.append(name)
    if not names:
        raise OptionError("--devices is empty: use all, a count, or names like /GPU:0,/GPU:1.")
    return tuple(names)


def visible_devices() -> list[str]:
    """This process's logical devices as short names (``/CPU:0``, ``/GPU:1``), CPUs first."""
    import tensorflow as tf

    names = []
    for device in tf.config.list_logical_devices():
        spec = tf.DeviceSpec.from_string(device.name)
        if spec.device_type in ("CPU", "GPU", "TPU"):
            names.append(f"/{spec.device_type}:{spec.device_index}")
    return sorted(set(names), key=lambda n: (n.split(":")[0] != "/CPU", n.split(":")[0], int(n.split(":")[1])))


def resolve_devices(devices) -> list[str]:
    """The device names a run uses. None / ``"all"``: every visible GPU, else every visible CPU device (one,
    unless logical CPU devices were configured); a count: the first that many of those; names: as given,
    each checked to be visible. The error names the visible devices."""
    visible = visible_devices()
    gpus = [name for name in visible if name.startswith("/GPU:")]
    pool = gpus or [name for name in visible if name.startswith("/CPU:")]
    listed = ", ".join(visible)
    if devices is None or devices == "all":
        return pool
    if isinstance(devices, int):
        if devices > len(pool):
            what = "GPU" if gpus else "CPU device"
            raise CkptfixError(f"--devices {devices}: only {len(pool)} {what}(s) visible ({listed}): "
                               f"pass at most {len(pool)}, or device names.")
        return pool[:devices]
    missing = [name for name in devices if name not in visible]
    if missing:
        raise CkptfixError(f"--devices: {', '.join(missing)} not visible; this process sees {listed}.")
    return list(devices)


@dataclass
class Ran:
    """One batch's result: what the session's ``moments`` returned, and where it ran."""

    batch: object
    moments: dict
    output: object
    device: str
    describe: Callable[[], str]


class DevicePool:
    """Whole batches run on ``sessions`` (``[(device name, session)]``), results in batch order.

    ``run(items)`` takes ``(batch, keep_output, describe)`` in batch order and yields :class:`Ran` in the same
    order. One session: inline, no thread. Several: a thread per device, each batch taken by the first free
    one; at most ``2 x devices`` batches are in flight (one running and one loaded per device), which bounds
    memory while the calling thread loads the next batch.
    """

    def __init__(self, sessions: Sequence[tuple[str, object]]) -> None:
        self.sessions = list(sessions)

    def run(self, items: Iterable[tuple[object, bool, Callable[[], str]]]) -> Iterator[Ran]:
        if len(self.sessions) == 1:
            device, session = self.sessions[0]
            for batch, keep, describe in items:
                moments, output = session.moments(batch, keep_output=keep)
                yield Ran(batch, moments, output, device, describe)
            return
        free: queue.Queue = queue.Queue()
        for entry in self.sessions:
            free.put(entry)

        def work(batch, keep, describe) -> Ran:
            device, session = free.get()
            try:
                moments, output = session.moments(batch, keep_output=keep)
                return Ran(batch, moments, output, device, describe)
            finally:
                free.put((device, session))

        limit = 2 * len(self.sessions)
        pending: collections.deque = collections.deque()
        with ThreadPoolExecutor(len(self.sessions), thread_name_prefix="ckptfix-device") as executor:
            try:
                for item in items:
                    if len(pending) >= limit:
                        yield pending.popleft().result()
                    pending.append(executor.submit(work, *item))
                while pending:
                    yield pending.popleft().result()
            finally:  # an error or Ctrl-C: drop what has not started; the running batches finish
                for future in pending:
                    future.cancel()
