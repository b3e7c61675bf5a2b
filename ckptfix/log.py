"""What a run tells while it works: one-line notices, and the calibration pass's progress.

Both go to the standard :mod:`logging` module, which is what pipeline code expects: notices to the ``ckptfix``
logger (``INFO``; ``WARNING`` for a warning: the repair gate's, a likely preprocessing mismatch, a write the
gate refused), progress to ``ckptfix.progress`` (``INFO``: a line at the start, one every
:data:`PROGRESS_INTERVAL` seconds, one at the end; each record also carries ``samples`` and ``total``, None when
unknown). The package adds only a :class:`logging.NullHandler`: nothing is printed unless the host configures
logging (``logging.basicConfig(level=logging.INFO)``). Notices also go to the run's ``on_notice`` callback (the
CLI's prints them) and into the report (``notices``).

On the terminal (``--progress``, ``progress=True``) the pass draws a tqdm bar on stderr when stderr is a
terminal; otherwise (CI logs, ``2>&1 | tee``, pipes) it prints the same plain lines as the log records, never a
carriage return.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from contextvars import ContextVar
from typing import Callable, Iterator, TextIO

LOGGER = logging.getLogger("ckptfix")
LOGGER.addHandler(logging.NullHandler())
PROGRESS_LOGGER = logging.getLogger("ckptfix.progress")

#: seconds between progress lines (log records, and plain lines on a stderr that is not a terminal)
PROGRESS_INTERVAL = 30.0


#: how notices name options: the CLI's flags, unless an API call says otherwise (:func:`naming`)
_NAMING: ContextVar[Callable[[str], str]] = ContextVar("ckptfix_notice_naming", default=lambda message: message)


@contextlib.contextmanager
def naming(rename: Callable[[str], str]) -> Iterator[None]:
    """Within the block, every notice is ``rename(message)`` wherever it goes (the API names keywords, not flags)."""
    token = _NAMING.set(rename)
    try:
        yield
    finally:
        _NAMING.reset(token)


class Notices:
    """One-line notices of a run: kept for the report, logged, and passed on as they come (the CLI prints them),
    each in the words of :func:`naming`."""

    def __init__(self, on_notice: Callable[[str], None] | None) -> None:
        self.messages: list[str] = []
        self._forward = on_notice

    def __call__(self, message: str, level: int = logging.INFO) -> None:
        message = _NAMING.get()(message)
        self.messages.append(message)
        LOGGER.log(level, message)
        if self._forward is not None:
            self._forward(message)

    def warn(self, message: str) -> None:
        """A notice that warns (logged at ``WARNING``)."""
        self(message, logging.WARNING)


class Progress:
    """The calibration pass's progress in samples (``total``: None when unknown): log records, and with
    ``display`` a tqdm bar on ``stream`` (default stderr) when it is a terminal, else plain lines.

    A context manager: the start line on entry, :meth:`update` per batch, the end line on a normal exit (none
    when the pass fails or is interrupted: the error says what happened)."""

    def __init__(self, total: int | None, display: bool, stream: TextIO | None = None,
                 interval: float = PROGRESS_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.samples = total, 0
        self._stream = sys.stderr if stream is None else stream
        self._interval, self._clock = interval, clock
        self._bar = None
        self._lines = display
        if display and _is_terminal(self._stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="sample", desc="calibrating", file=self._stream, leave=False)
            self._lines = False

    def __enter__(self) -> Progress:
        self._start = self._last = self._clock()
        self._tell("calibrating: " + (f"{self.total} samples" if self.total is not None else "samples until the data ends"))
        return self

    def update(self, samples: int) -> None:
        self.samples += samples
        if self._bar is not None:
            self._bar.update(samples)
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._tell(f"calibrating: {self._count()}, {self._rate(now)}")

    def __exit__(self, kind, error, traceback) -> None:
        if self._bar is not None:
            self._bar.close()
        if kind is None:
            now = self._clock()
            self._tell(f"calibrated: {self.samples} samples in {now - self._start:.1f} s, {self._rate(now)}")

    def _count(self) -> str:
        """``256/512 samples (50%)``, or ``256 samples`` when the total is unknown."""
        if self.total is None:
            return f"{self.samples} samples"
        return f"{self.samples}/{self.total} samples ({self.samples / self.total:.0%})"

    def _rate(self, now: float) -> str:
        elapsed = now - self._start
        return f"{self.samples / elapsed:.0f} samples/s" if elapsed > 0 else "samples/s not measured"

    def _tell(self, line: str) -> None:
        PROGRESS_LOGGER.info(line, extra={"samples": self.samples, "total": self.total})
        if self._lines:
            print(line, file=self._stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
