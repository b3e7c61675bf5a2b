"""Ctrl-C, SIGTERM and a full disk through the real CLI, on a slim checkpoint that also holds a 96 MB variable the
graph does not use (so the write takes a measurable time): exit 130, 143 or 1, one clear line, no output folder,
no temporary files (staging folder, lock file), the input untouched."""

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import forked

UNUSED_ELEMENTS = 24 << 20  # 96 MB of float32


@pytest.fixture(scope="module")
def heavy(slim_model, tmp_path_factory) -> Path:
    """The stale seed model re-saved with an extra 96 MB variable outside its forward pass; returns the prefix."""
    model = slim_model("seed")
    folder = tmp_path_factory.mktemp("heavy") / "train"
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        restore = v1.train.import_meta_graph(str(model.meta))
        unused = v1.get_variable("unused/table", shape=[UNUSED_ELEMENTS], initializer=v1.initializers.random_uniform(seed=0))
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            restore.restore(session, model.prefix)
            session.run(unused.initializer)
            return Path(saver.save(session, str(folder / "model.ckpt"), global_step=1))


@pytest.fixture(scope="module")
def long_calibration(slim_model, tmp_path_factory) -> Path:
    """12,800 samples (the seed model's calibration set 50 times over): a few seconds of calibration at batch 4."""
    path = tmp_path_factory.mktemp("long") / "calib.npy"
    np.save(path, np.tile(np.load(slim_model("seed").calib), (50, 1, 1, 1)))
    return path


class Cli:
    """A CLI process (:func:`forked.start`) whose stderr the test can watch while it runs."""

    def __init__(self, *args, limits: dict | None = None):
        self.process = forked.start([sys.executable, "-m", "ckptfix", *args], limits=limits)
        self._stderr: str | None = None  # once finished

    @property
    def stderr(self) -> str:
        return self.process.peek()[1] if self._stderr is None else self._stderr

    def wait_for(self, condition, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the CLI ended (code {self.process.returncode}) first:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise TimeoutError(self.stderr)
            time.sleep(0.005)

    def finish(self, timeout: float = 180) -> int:
        _, self._stderr = self.process.communicate(timeout)
        return self.process.returncode


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _staging(output: Path) -> list[Path]:
    return list(output.parent.glob(f".{output.name}.tmp-*"))


POINTS = {
    # the progress bar on stderr shows calibration has started
    "calibrating": lambda cli, output: "calibrating" in cli.stderr,
    # the hidden staging folder beside the output exists: the checkpoint is being written
    "writing": lambda cli, output: bool(_staging(output)),
}


#: Ctrl-C, and SIGTERM (what timeout, Kubernetes and Slurm send), taken alike: the exit code and line of each
SIGNALS = {"SIGINT": (signal.SIGINT, 130, "interrupted: nothing was written."),
           "SIGTERM": (signal.SIGTERM, 143, "terminated: nothing was written.")}


@pytest.mark.parametrize("name", list(SIGNALS))
@pytest.mark.parametrize("point", list(POINTS))
def test_a_signal_exits_with_its_code_and_leaves_nothing(heavy, long_calibration, tmp_path, point, name):
    number, code, line = SIGNALS[name]
    output = tmp_path / "out"
    before = _digest(heavy.parent)
    data = long_calibration if point == "calibrating" else long_calibration.parent / "short.npy"
    if point == "writing":
        np.save(data, np.load(long_calibration)[:64])
    cli = Cli("recalibrate", heavy, data, "-o", output, "--batch-size", "4")
    cli.wait_for(lambda: POINTS[point](cli, output))
    cli.process.send_signal(number)
    assert cli.finish() == code, cli.stderr
    assert cli.stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in cli.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no staging folder, no lock file
    assert _digest(heavy.parent) == before


def test_file_size_limit_while_writing(heavy, slim_model, tmp_path):
    """RLIMIT_FSIZE of 16 MB on the CLI process: writing the 96 MB shard fails as on a full disk."""
    output = tmp_path / "out"
    cli = Cli("recalibrate", heavy, slim_model("seed").calib, "-o", output, "--no-progress",
              limits={resource.RLIMIT_FSIZE: (16 << 20, 16 << 20)})
    assert cli.finish() == 1, cli.stderr
    assert cli.stderr.strip().splitlines() == [
        f"error: cannot write {output}: File too large. Nothing was written; free disk space, check permissions "
        "or choose another -o."
    ]
    assert sorted(tmp_path.iterdir()) == []


def _can_mount_private_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_private_tmpfs(), reason="needs unshare and mount rights for a private tmpfs")
def test_disk_full_on_a_small_tmpfs(heavy, slim_model, tmp_path):
    """The output on a 32 MB tmpfs (in a private mount namespace, gone with the process): ENOSPC while writing."""
    disk = tmp_path / "disk"
    disk.mkdir()
    output = disk / "out"
    script = (
        f'mount -t tmpfs -o size=32m tmpfs "{disk}" || exit 99; '
        f'"{sys.executable}" -m ckptfix recalibrate "{heavy}" "{slim_model("seed").calib}" -o "{output}" --no-progress; '
        f'code=$?; ls -A "{disk}" >&2; exit $code'
    )
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 1, result.stderr
    # the error line, then what ls found left on the tmpfs: nothing
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write {output}: No space left on device. Nothing was written; free disk space, check "
        "permissions or choose another -o."
    ]
