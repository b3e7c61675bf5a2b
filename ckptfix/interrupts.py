"""Ctrl-C taken only between steps, where it is safe: between calibration batches and between writing steps."""

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
        signal.signal(signal.SIGINT, signal.default_int_handler)
