"""Ctrl-C taken only between steps, where it is safe: between calibration batches and between writing steps;
and ignored after the commit point (the output in place), so a run that has written exits 0."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def interrupts_between_steps() -> Iterator[Callable[[], None]]:
    """Note Ctrl-C and raise it (KeyboardInterrupt) only where the returned check is called.

    A KeyboardInterrupt raised inside a TensorFlow call can be lost: TensorFlow's C++ code (e.g. ``nest``
    flattening) turns it into ``SystemError: ... returned a result with an exception set``, prints it and goes
    on, so a Ctrl-C while calibrating or writing was once ignored and the run exited 0. And one raised between
    the renames that put the output in place could lose the output. So the measuring loop checks between
    batches and the writer between steps; a Ctrl-C after the last check lets the step finish.
    Only Python's default SIGINT handler in the main thread is replaced; any other is left alone.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: None
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))

    def check() -> None:
        if received:
            raise KeyboardInterrupt

    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, _ignore if _scope.committed else signal.default_int_handler)


class _Scope:
    """Whether an enclosing :func:`commit_scope` has passed its commit point (process-wide: SIGINT is)."""

    depth = 0
    committed = False


_scope = _Scope()


def _ignore(signum, frame) -> None:
    """Ctrl-C after the commit point: the output is complete; the run finishes and exits 0."""


@contextlib.contextmanager
def commit_scope() -> Iterator[_Scope]:
    """The span in which :func:`commit` may be called: before it, Ctrl-C behaves as usual (nothing written);
    after it, until the outermost scope ends, Ctrl-C is ignored, so the output and whatever follows it (side
    outputs, the printed report) complete and the run exits 0. Scopes nest (the CLI's holds the API's). Only in
    the main thread with Python's default handler; elsewhere a no-op."""
    _scope.depth += 1
    try:
        yield _scope
    finally:
        _scope.depth -= 1
        if _scope.depth == 0:
            committed, _scope.committed = _scope.committed, False
            if committed and signal.getsignal(signal.SIGINT) is _ignore:
                signal.signal(signal.SIGINT, signal.default_int_handler)


def commit() -> None:
    """The output is in place: Ctrl-C is ignored until the enclosing :func:`commit_scope` ends. Called by the
    writer right after its swap (:mod:`ckptfix.io.atomic`)."""
    if _scope.depth == 0 or threading.current_thread() is not threading.main_thread():
        return
    _scope.committed = True
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _ignore)


def ignore_interrupts() -> None:
    """Ignore Ctrl-C for the rest of the process (the CLI, past its commit point: nothing is left to undo)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
