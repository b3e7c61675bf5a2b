"""Ctrl-C (SIGINT) and SIGTERM taken only between steps, where it is safe: between calibration batches and
between writing steps; and ignored after the commit point (the output in place), so a run that has written
exits 0.

SIGTERM is what ``timeout``, Kubernetes and Slurm send before a ``kill -9``: it is taken as Ctrl-C is, and
raises :class:`Terminated` (a ``KeyboardInterrupt``) at the same points, so the same clean-up runs (staging
folder and lock removed, nothing written); the CLI then exits 143 (128 + SIGTERM), as a process ended by it
would. The CLI takes SIGTERM for its whole run (:func:`take_sigterm`); the Python API, in a process that has
left SIGTERM at its default (end the process), takes it for the call (:func:`sigterm_during_call`), cleans up,
then lets the signal end the process as it would have.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM received: raised where Ctrl-C would be (a ``KeyboardInterrupt``, so the same clean-up runs)."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum, frame) -> None:
    raise Terminated


#: each signal taken, and the handler that raises it where the process is (Python's own for SIGINT)
_RAISING = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _raise_terminated}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def take_sigterm() -> None:
    """SIGTERM raises :class:`Terminated` for the rest of the process (the CLI, which owns its process)."""
    if _main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def sigterm_during_call() -> Iterator[None]:
    """In the main thread of a process whose SIGTERM is at its default: take SIGTERM during the block, and when
    it arrives, let the block clean up, then end the process by SIGTERM as the default would have. Elsewhere (a
    process with its own SIGTERM handler, another thread) a no-op."""
    if not _main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    _scope.ignored.clear()
    try:
        yield
    except Terminated:
        _end_by_sigterm()
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.SIGTERM in _scope.ignored:  # received after the commit point: the output is complete, now end
        _end_by_sigterm()


def _end_by_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def interrupts_between_steps() -> Iterator[Callable[[], None]]:
    """Note Ctrl-C / SIGTERM and raise it (KeyboardInterrupt / :class:`Terminated`) only where the returned check
    is called.

    A KeyboardInterrupt raised inside a TensorFlow call can be lost: TensorFlow's C++ code (e.g. ``nest``
    flattening) turns it into ``SystemError: ... returned a result with an exception set``, prints it and goes
    on, so a Ctrl-C while calibrating or writing was once ignored and the run exited 0. And one raised between
    the renames that put the output in place could lose the output. So the measuring loop checks between
    batches and the writer between steps; a signal after the last check lets the step finish.
    Only a handler that raises (Python's default SIGINT one, :func:`take_sigterm`'s) in the main thread is
    replaced; any other is left alone.
    """
    taken = [number for number, raising in _RAISING.items()
             if _main_thread() and signal.getsignal(number) is raising]
    received: list[int] = []
    for number in taken:
        signal.signal(number, lambda signum, frame: received.append(signum))

    def check() -> None:
        if signal.SIGTERM in received:
            raise Terminated
        if received:
            raise KeyboardInterrupt

    try:
        yield check
    finally:
        for number in taken:
            signal.signal(number, _ignore if _scope.committed else _RAISING[number])


class _Scope:
    """Whether an enclosing :func:`commit_scope` has passed its commit point (process-wide: signals are)."""

    depth = 0
    committed = False
    ignored: list[int] = []  # signals received after the commit point


_scope = _Scope()


def _ignore(signum, frame) -> None:
    """Ctrl-C or SIGTERM after the commit point: the output is complete; the run finishes and exits 0."""
    _scope.ignored.append(signum)


@contextlib.contextmanager
def commit_scope() -> Iterator[_Scope]:
    """The span in which :func:`commit` may be called: before it, Ctrl-C behaves as usual (nothing written);
    after it, until the outermost scope ends, Ctrl-C and SIGTERM are ignored, so the output and whatever follows
    it (side outputs, the printed report) complete and the run exits 0. Scopes nest (the CLI's holds the
    API's). Only in the main thread with raising handlers; elsewhere a no-op."""
    _scope.depth += 1
    try:
        yield _scope
    finally:
        _scope.depth -= 1
        if _scope.depth == 0:
            committed, _scope.committed = _scope.committed, False
            for number, raising in _RAISING.items():
                if committed and signal.getsignal(number) is _ignore:
                    signal.signal(number, raising)


def commit() -> None:
    """The output is in place: Ctrl-C and SIGTERM are ignored until the enclosing :func:`commit_scope` ends.
    Called by the writer right after its swap (:mod:`ckptfix.io.atomic`)."""
    if _scope.depth == 0 or not _main_thread():
        return
    _scope.committed = True
    for number, raising in _RAISING.items():
        if signal.getsignal(number) is raising:
            signal.signal(number, _ignore)


def ignore_interrupts() -> None:
    """Ignore Ctrl-C and SIGTERM for the rest of the process (the CLI, past its commit point: nothing is left to
    undo)."""
    if _main_thread():
        for number in _RAISING:
            signal.signal(number, signal.SIG_IGN)
