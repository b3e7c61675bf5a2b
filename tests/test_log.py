"""What a run tells while it works (ckptfix/log.py): plain progress lines when stderr is no terminal, a bar when
it is one, notices and progress through the standard logging module (a CLI run into pipes:
tests/cli/test_recalibrate_cli.py)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

import ckptfix
from ckptfix.log import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_pipe_is_plain_lines_a_start_periodic_ones_and_an_end():
    stream, clock = io.StringIO(), _Clock()
    with Progress(512, display=True, stream=stream, interval=30, clock=clock) as progress:
        for _ in range(16):
            clock.now += 4.0  # 64 s in all: lines at 32 s and 64 s
            progress.update(32)
    text = stream.getvalue()
    assert "\r" not in text
    assert text.splitlines() == ["calibrating: 512 samples", "calibrating: 256/512 samples (50%), 8 samples/s",
                                 "calibrating: 512/512 samples (100%), 8 samples/s",
                                 "calibrated: 512 samples in 64.0 s, 8 samples/s"]


def test_progress_on_a_terminal_is_a_bar_and_nothing_without_display():
    terminal = _Terminal()
    with Progress(64, display=True, stream=terminal) as progress:
        progress.update(64)
    assert "\r" in terminal.getvalue() and "calibrating" in terminal.getvalue()
    quiet = io.StringIO()
    with Progress(64, display=False, stream=quiet) as progress:
        progress.update(64)
    assert quiet.getvalue() == ""


def test_a_failed_pass_prints_no_end_line():
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress(64, display=True, stream=stream) as progress:
        progress.update(32)
        raise KeyboardInterrupt
    assert stream.getvalue().splitlines() == ["calibrating: 64 samples"]


@pytest.fixture
def records():
    """Every record of the ``ckptfix`` loggers during the test (as a host's handler would get them)."""
    caught: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = caught.append
    logger = logging.getLogger("ckptfix")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield caught
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_the_api_logs_notices_and_progress_under_the_ckptfix_logger_and_prints_nothing(tmp_path, records, capsys):
    import tensorflow as tf

    from ckptfix.demo import fused_batch_norm

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, 4, 4, 2], name="images")
        logits = tf.reduce_mean(fused_batch_norm(images, v1.placeholder_with_default(False, []), "bn"), [1, 2])
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(session, str(tmp_path / "model.ckpt"))
    assert logits is not None
    data = np.random.default_rng(0).standard_normal((32, 4, 4, 2)).astype(np.float32) + 3
    report = ckptfix.diagnose(prefix, data, batch_size=4)
    printed = capsys.readouterr()
    assert printed.err == printed.out == ""  # the API prints nothing: no bar, no notice
    progress = [r for r in records if r.name == "ckptfix.progress"]
    assert progress[0].getMessage() == "calibrating: 32 samples" and progress[-1].getMessage().startswith("calibrated: 32")
    assert (progress[-1].samples, progress[-1].total) == (32, 32)
    notices = [r for r in records if r.name == "ckptfix"]
    assert [r.getMessage() for r in notices] == report.notices
    warned = {r.getMessage() for r in notices if r.levelno == logging.WARNING}
    assert warned == set(report.gate.warnings) and warned  # --batch-size 4 is below the gate's small batch
