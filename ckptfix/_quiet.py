"""Keep TensorFlow's C++ and Python log noise out of ckptfix's output unless the user asks for it (-v)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator


def quiet_native_logs() -> None:
    """Hide TensorFlow's C++ logs (``TF_CPP_MIN_LOG_LEVEL``, unless set): for the CLI, which owns its process and
    its environment; effective only before TensorFlow is first imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def silence_tensorflow(verbose: bool = False) -> None:
    """Hide TF's Python logs (loggers and warnings). The host's environment is left alone: a library must not
    change what its host's later imports and child processes see (:func:`quiet_native_logs` is the CLI's)."""
    if verbose:
        return
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="tensorflow")
    warnings.filterwarnings("ignore", module="keras")
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 (TensorFlow's C++ and absl logs, which ignore
    ``TF_CPP_MIN_LOG_LEVEL`` for their earliest lines) to /dev/null, while Python's ``sys.stderr`` keeps
    writing to the real stderr. For the CLI; a library must not rewire its host's file descriptors."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    original = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, closefd=False, encoding=original.encoding, errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = original
        os.dup2(saved, 2)
        os.close(saved)
