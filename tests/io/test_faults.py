"""Faults while writing, on real processes: SIGKILL at several points of the write, disk full, permission lost
while writing, two runs writing the same output at once. The output holds nothing or a complete checkpoint,
never a partial one; a later run removes the dead run's staging folder.

Each writer runs ``write_recalibrated_checkpoint`` in a child process on a 64 MB checkpoint written in 16 MB
parts, so the write lasts long enough to be caught at a given step by polling the output's parent folder.
"""

import ctypes
import hashlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ckptfix.io import locate_checkpoint
from ckptfix.io.atomic import _exclusive_lock, remove_stale_staging
from ckptfix.io.checkpoint_writer import write_recalibrated_checkpoint

pytestmark = pytest.mark.subprocess  # each test starts processes

CHANNELS = 8
BIG_TENSORS = 4
BIG_ELEMENTS = 4 << 20  # 16 MB of float32 each
PART_BYTES = 8 << 20  # every big tensor gets a part of its own

CHILD = f"""
import sys
import numpy as np
from ckptfix import _quiet
_quiet.silence_tensorflow()
from ckptfix.io import locate_checkpoint
from ckptfix.io.checkpoint_writer import write_recalibrated_checkpoint
from ckptfix.errors import CkptfixError
prefix, output, value, overwrite = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
new = {{"bn/moving_mean": np.full({CHANNELS}, value), "bn/moving_variance": np.full({CHANNELS}, value)}}
if len(sys.argv) > 5:  # a start line shared with another writer: say ready, wait for the go file
    import os, time
    open(sys.argv[5] + f".ready-{{os.getpid()}}", "w").close()
    while not os.path.exists(sys.argv[5]):
        time.sleep(0.001)
try:
    write_recalibrated_checkpoint(locate_checkpoint(prefix), new, output, overwrite=overwrite, part_bytes={PART_BYTES})
except CkptfixError as error:
    print(f"error: {{error}}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A 64 MB Saver checkpoint: four 16 MB float32 variables and one BN layer's statistics."""
    folder = tmp_path_factory.mktemp("big") / "train"
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        for number in range(BIG_TENSORS):
            v1.get_variable(f"big/w{number}", shape=[BIG_ELEMENTS], initializer=v1.initializers.random_uniform(seed=number))
        v1.get_variable("bn/moving_mean", initializer=np.zeros(CHANNELS, np.float32), trainable=False)
        v1.get_variable("bn/moving_variance", initializer=np.ones(CHANNELS, np.float32), trainable=False)
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return Path(saver.save(session, str(folder / "model.ckpt"), global_step=1))


@pytest.fixture()
def workspace(big, tmp_path) -> Path:
    """A folder beside which outputs are written: ``tmp_path/out``. The checkpoint stays in its own folder."""
    return tmp_path


def start_writer(prefix: Path, output: Path, value: float, overwrite: bool = False, preexec_fn=None,
                 start_line: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(prefix), str(output), str(value), "1" if overwrite else "0",
         *([str(start_line)] if start_line else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def wait_for(process: subprocess.Popen, condition, timeout: float = 120) -> bool:
    """Poll ``condition()`` every millisecond until it holds (True) or ``process`` ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    process.kill()
    raise TimeoutError("the writer neither reached the awaited step nor ended")


def staging_folders(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f".{output.name}.tmp-*"))


def staging_has(output: Path, pattern: str, count: int = 1) -> bool:
    return any(len(list(folder.glob(pattern))) >= count for folder in staging_folders(output))


KILL_POINTS = {
    "staging created": lambda out: bool(staging_folders(out)),
    "between parts": lambda out: staging_has(out, ".parts/*.index", 2),
    "verifying merged checkpoint": lambda out: staging_has(out, "model.ckpt-1.index"),
}


def statistic(prefix: Path) -> float:
    values = tf.train.load_checkpoint(str(prefix)).get_tensor("bn/moving_mean")
    assert len(set(values.tolist())) == 1
    return float(values[0])


def assert_complete(output: Path, big: Path, value: float) -> None:
    """``output`` holds the whole checkpoint: every big tensor byte-equal to the input's, the statistics new."""
    prefix = output / big.name
    before, after = tf.train.load_checkpoint(str(big)), tf.train.load_checkpoint(str(prefix))
    assert sorted(after.get_variable_to_dtype_map()) == sorted(before.get_variable_to_dtype_map())
    for number in range(BIG_TENSORS):
        key = f"big/w{number}"
        assert after.get_tensor(key).tobytes() == before.get_tensor(key).tobytes(), key
    assert statistic(prefix) == value
    assert tf.train.latest_checkpoint(str(output)) == str(prefix)


def folder_digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def write(big: Path, output: Path, value: float, overwrite: bool = False) -> Path:
    new = {"bn/moving_mean": np.full(CHANNELS, value), "bn/moving_variance": np.full(CHANNELS, value)}
    return write_recalibrated_checkpoint(locate_checkpoint(big), new, output, overwrite=overwrite, part_bytes=PART_BYTES)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_while_writing_leaves_no_output_and_the_next_run_cleans_up(big, workspace, point):
    output = workspace / "out"
    writer = start_writer(big, output, 2.0)
    reached = wait_for(writer, lambda: KILL_POINTS[point](output))
    assert reached, writer.stderr.read()
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL
    if point == "verifying merged checkpoint" and output.exists():  # the rename won the race: then it is whole
        assert_complete(output, big, 2.0)
    else:
        assert not output.exists()
    assert staging_folders(output), "a killed writer cannot remove its staging folder"

    write(big, output, 3.0)  # a later run
    assert_complete(output, big, 3.0)
    assert sorted(p.name for p in workspace.iterdir()) == ["out"]


def test_sigkill_while_overwriting_keeps_the_previous_output(big, workspace):
    output = workspace / "out"
    write(big, output, 1.0)
    previous = folder_digest(output)
    writer = start_writer(big, output, 2.0, overwrite=True)
    assert wait_for(writer, lambda: KILL_POINTS["between parts"](output)), writer.stderr.read()
    writer.kill()
    writer.wait()
    assert folder_digest(output) == previous
    write(big, output, 3.0, overwrite=True)
    assert_complete(output, big, 3.0)
    assert sorted(p.name for p in workspace.iterdir()) == ["out"]


def test_cleanup_spares_live_runs_and_other_hosts(workspace):
    output = workspace / "out"
    live = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    try:
        names = {
            "live": f".out.tmp-{live.pid}-{host}-abc",
            "gone": f".out.tmp-{gone.pid}-{host}-def",
            "gone_old": f".out.old-{gone.pid}-{host}-ghi",
            "other_host": f".out.tmp-{gone.pid}-not-{host}-jkl",
            "other_output": f".output.tmp-{gone.pid}-{host}-mno",
        }
        for name in names.values():
            (workspace / name).mkdir()
            (workspace / name / "model.ckpt.index").write_bytes(b"partial")
        removed = remove_stale_staging(output)
        assert sorted(p.name for p in removed) == sorted([names["gone"], names["gone_old"]])
        assert sorted(p.name for p in workspace.iterdir()) == sorted(
            [names["live"], names["other_host"], names["other_output"]]
        )
    finally:
        live.kill()
        live.wait()


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_gives_a_clear_error_and_leaves_nothing(big, workspace):
    """RLIMIT_FSIZE in the writer process: the kernel refuses writes past 4 MB (EFBIG), as a full disk would."""
    output = workspace / "out"
    writer = start_writer(big, output, 2.0, preexec_fn=_limit_file_size(4 << 20))
    _, stderr = writer.communicate(timeout=300)
    assert writer.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1:] == [  # (TensorFlow's start-up lines: the CLI hides them)
        f"error: cannot write {output}: File too large. Nothing was written; free disk space, check permissions "
        "or choose another -o."
    ]
    assert sorted(workspace.iterdir()) == []


def _without_root_file_access() -> None:
    """Drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH from the bounding set, so a root child obeys chmod."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_permission_lost_while_writing(big, workspace):
    """The output's parent becomes read-only while the parts are written: the rename into place is refused."""
    parent = workspace / "parent"
    parent.mkdir()
    output = parent / "out"
    writer = start_writer(big, output, 2.0, preexec_fn=_without_root_file_access)
    try:
        assert wait_for(writer, lambda: KILL_POINTS["between parts"](output)), writer.stderr.read()
        parent.chmod(0o555)
        _, stderr = writer.communicate(timeout=300)
    finally:
        parent.chmod(0o755)
    assert writer.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: cannot write {output}: Permission denied. ")
    assert not output.exists()
    write(big, output, 3.0)  # once writable again, a later run succeeds and removes the leftovers
    assert_complete(output, big, 3.0)
    assert sorted(p.name for p in parent.iterdir()) == ["out"]


def test_two_runs_writing_the_same_output_at_once(big, workspace, tmp_path_factory):
    """Both writers import TensorFlow, then start writing at the same moment (a go file both wait for)."""
    output = workspace / "out"
    go = tmp_path_factory.mktemp("start") / "go"
    runs = {value: start_writer(big, output, value, start_line=go) for value in (1.0, 2.0)}
    wait_for(runs[1.0], lambda: len(list(go.parent.glob("go.ready-*"))) == 2)
    go.touch()
    results = {value: run.communicate(timeout=300) for value, run in runs.items()}
    codes = {value: run.returncode for value, run in runs.items()}
    assert sorted(codes.values()) == [0, 1], results
    winner = next(value for value, code in codes.items() if code == 0)
    loser_stderr = results[next(value for value, code in codes.items() if code == 1)][1]
    # the lock; or the winner's rename landed before the loser's write began, or (on a loaded machine)
    # before the loser even checked the output: each is a clear refusal, and the output is the winner's whole
    refusals = ("another run is writing", "appeared while writing", "exists and is not empty")
    assert any(refusal in loser_stderr for refusal in refusals), loser_stderr
    assert_complete(output, big, winner)
    assert sorted(p.name for p in workspace.iterdir()) == ["out"]


def test_a_run_that_finds_the_output_locked_fails_at_once(big, workspace):
    """While this process holds the output's lock (as a running writer does), a writer process gives up."""
    output = workspace / "out"
    with _exclusive_lock(output):
        writer = start_writer(big, output, 2.0)
        _, stderr = writer.communicate(timeout=300)
    assert writer.returncode == 1
    assert stderr.strip().splitlines()[-1] == f"error: another run is writing {output} right now: wait for it to finish or choose another -o."
    assert sorted(workspace.iterdir()) == []
