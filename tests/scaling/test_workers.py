"""Several workers: two `ckptfix` processes under TF_CONFIG on 127.0.0.1 ports (MultiWorkerMirroredStrategy's
convention). Batch i runs on worker i mod 2; the chief's statistics equal one process's; only the chief writes;
a worker killed mid-run (chief or not) makes the other stop with a clear error, nothing written, in
bounded time."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ckptfix
from ckptfix.stats import Checks
from ckptfix.stats.stopping import MIN_BATCHES
from diagnostics.schema import validate_report
import forked
from scaling.helpers import ROOT, TIMEOUT_SECONDS, assert_same_statistics, environment, free_ports, tf_config

pytestmark = pytest.mark.subprocess  # each test starts processes

sys.path.insert(0, str(Path(__file__).parents[1] / "keras"))

BATCH_SIZE, BATCHES = 24, 11  # 256 samples: 11 batches, 6 for worker 0 (batches 0, 2, ..., 10) and 5 for worker 1


_SPAWNED: list[forked.Forked] = []


@pytest.fixture(autouse=True)
def _no_worker_left():
    """A failed test leaves no worker behind (TensorFlow blocked in a collective ignores SIGTERM: SIGKILL)."""
    yield
    while _SPAWNED:
        process = _SPAWNED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def _worker(ports, index, *args, user_logging=False, **env_extra):
    """A ``ckptfix`` worker; ``user_logging``: TensorFlow's log level left to ckptfix, as a user's shell does."""
    env = environment(TF_CONFIG=tf_config(ports, index), **env_extra)
    if user_logging:
        env.pop("TF_CPP_MIN_LOG_LEVEL")
    process = forked.start([sys.executable, "-m", "ckptfix", *map(str, args)], env=env)
    _SPAWNED.append(process)
    return process


def _finish(process, timeout=TIMEOUT_SECONDS):
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"a worker did not finish within {timeout} s: {(err or '')[-2000:]}") from None
    return process.returncode, out, err


def test_two_workers_match_one_process_and_only_the_chief_writes(slim_model, tmp_path):
    model = slim_model("seed")
    options = ["--batch-size", BATCH_SIZE, "--seed", 3, "--no-progress"]
    one = ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "one", batch_size=BATCH_SIZE,
                              seed=3).to_dict()
    ports = free_ports(2)
    workers = [_worker(ports, k, "recalibrate", model.prefix, model.calib, "-o", tmp_path / f"out{k}",
                       "--report", tmp_path / f"report{k}.json", *options) for k in range(2)]
    (chief_code, chief_out, chief_err), (code, out, err) = (_finish(w) for w in workers)

    assert chief_code == 0, chief_err[-3000:]
    assert code == 0, err[-3000:]
    chief = json.loads((tmp_path / "report0.json").read_text())
    validate_report(chief)
    assert_same_statistics(one, chief)
    assert chief["num_batches"] == BATCHES and chief["num_samples"] == 256
    assert [(row["worker"], row["batches"]) for row in chief["devices"]] == [(0, 6), (1, 5)]
    assert "2 devices on 2 workers ran the batches" in chief_out
    assert (tmp_path / "out0").is_dir()
    assert not (tmp_path / "out1").exists() and not (tmp_path / "report1.json").exists()
    assert f"worker 1 of 2: statistics combined; the chief (worker 0) writes {tmp_path / 'out1'}" in out


def test_two_workers_diagnose_a_keras_model_and_the_chief_reports(tmp_path):
    import keras

    from keras_models import functional_model, images

    path, data = tmp_path / "small.keras", tmp_path / "calib.npy"
    functional_model(keras).save(path)
    np.save(data, images(110, seed=5)[0])  # 7 batches of 16 (the last 14): 4 on worker 0, 3 on worker 1
    one = ckptfix.diagnose(path, np.load(data), batch_size=16, shuffle=False).to_dict()
    ports = free_ports(2)
    workers = [_worker(ports, k, "diagnose", path, data, "--batch-size", 16, "--no-shuffle", "--json") for k in range(2)]
    (chief_code, chief_out, chief_err), (code, out, err) = (_finish(w) for w in workers)

    assert chief_code == (3 if one["verdict"] == "stale" else 0), chief_err[-3000:]
    assert code == 0, err[-3000:]
    chief = json.loads(chief_out)
    assert_same_statistics(one, chief)
    assert [(row["worker"], row["batches"], row["samples"]) for row in chief["devices"]] == [(0, 4, 62), (1, 3, 48)]
    assert out == "worker 1 of 2: statistics combined; the chief (worker 0) reports.\n"


def test_two_workers_stop_together_after_the_first_stable_round(slim_model, large_set, tmp_path):
    """--until-stable in a cluster: at each check (after rounds of a batch per worker) the merged statistics decide,
    the same on both workers; the pass stops at the first stable check, with the statistics of the batches read
    (a prefix of the batch order; read in a random order, the default, as stopping early needs)."""
    model, tolerance = slim_model("seed"), 0.02
    ports = free_ports(2)
    workers = [_worker(ports, k, "diagnose", model.prefix, large_set, "--batch-size", 16, "--json",
                       "--until-stable", tolerance, "--report", tmp_path / f"report{k}.json") for k in range(2)]
    (chief_code, chief_out, chief_err), (code, out, err) = (_finish(w) for w in workers)

    assert chief_code in (0, 3) and code in (0, 3), (chief_err + err)[-3000:]
    chief = json.loads(chief_out)
    assert chief["stop_reason"] == "stable" and chief["num_samples"] < 4096 // 4
    rounds = chief["num_batches"] // 2
    assert chief["num_batches"] == 2 * rounds and chief["num_samples"] == 16 * chief["num_batches"]
    assert [(row["worker"], row["batches"]) for row in chief["devices"]] == [(0, rounds), (1, rounds)]
    assert all(layer["uncertainty"]["mean_standard_error"] < tolerance
               and layer["uncertainty"]["variance_relative_error"] < tolerance for layer in chief["layers"])
    options = dict(batch_size=16)  # the same seeded order: num_samples takes its first samples
    same = ckptfix.diagnose(model.prefix, large_set, num_samples=chief["num_samples"], **options).to_dict()
    assert_same_statistics(same, chief)
    checks = Checks(2)
    checked = [2 * rounds for rounds in range(1, chief["num_batches"] // 2 + 1) if checks.due(rounds)]
    assert checked[-1] == chief["num_batches"]  # it stopped at a check
    if len(checked) > 1:  # and the check before was not stable
        before = ckptfix.diagnose(model.prefix, large_set, num_samples=16 * checked[-2], agreement_samples=0, **options)
        assert any(layer.mean_standard_error >= tolerance or layer.variance_relative_error >= tolerance
                   for layer in before.layers)
    else:  # stable at the first check, after the minimum number of batches: none before it
        assert chief["num_batches"] == 2 * -(-MIN_BATCHES // 2)
    assert not (tmp_path / "report1.json").exists()


def test_a_worker_whose_share_ends_first_keeps_joining_the_rounds(slim_model, tmp_path):
    """11 batches: worker 1's share (5) ends a round before worker 0's (6); with a tolerance never met, both
    read everything, and the statistics are one process's."""
    model = slim_model("seed")
    options = ["--batch-size", BATCH_SIZE, "--seed", 3, "--no-progress", "--until-stable", 1e-6]
    ports = free_ports(2)
    workers = [_worker(ports, k, "recalibrate", model.prefix, model.calib, "-o", tmp_path / f"out{k}",
                       "--report", tmp_path / f"report{k}.json", *options) for k in range(2)]
    (chief_code, _, chief_err), (code, _, err) = (_finish(w) for w in workers)

    assert chief_code == 0 and code == 0, (chief_err + err)[-3000:]
    chief = json.loads((tmp_path / "report0.json").read_text())
    assert chief["stop_reason"] == "data" and chief["num_batches"] == BATCHES and chief["num_samples"] == 256
    assert [(row["worker"], row["batches"]) for row in chief["devices"]] == [(0, 6), (1, 5)]
    one = ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "one", batch_size=BATCH_SIZE,
                              seed=3).to_dict()
    assert_same_statistics(one, chief)


def test_two_workers_each_decode_half_an_image_folder_and_match_one_process(slim_model, tmp_path):
    """Issue 26: files are assigned to batches before decoding; each worker decodes only its batches' files (the
    preprocessing function logs every image it gets), and the statistics are the one process's."""
    model = slim_model("seed")  # 64 PNGs: 8 batches of 8, batches 0, 2, 4, 6 on worker 0 and 1, 3, 5, 7 on worker 1
    options = dict(batch_size=8, seed=2, preprocess="scaling.decode_log:preprocess")
    one = ckptfix.diagnose(model.prefix, model.images_dir, **options).to_dict()
    ports, log = free_ports(2), tmp_path / "decoded"
    tests = str(Path(__file__).parents[1])
    workers = [_worker(ports, k, "diagnose", model.prefix, model.images_dir, "--json", "--batch-size", 8, "--seed", 2,
                       "--preprocess", options["preprocess"], CKPTFIX_DECODE_LOG=str(log),
                       PYTHONPATH=os.pathsep.join([str(ROOT), tests])) for k in range(2)]
    (chief_code, chief_out, chief_err), (code, _, err) = (_finish(w) for w in workers)

    assert chief_code in (0, 3) and code == 0, (chief_err + err)[-3000:]
    chief = json.loads(chief_out)
    assert_same_statistics(one, chief)
    assert [(row["worker"], row["batches"], row["samples"]) for row in chief["devices"]] == [(0, 4, 32), (1, 4, 32)]
    decoded = [Path(f"{log}.{k}").read_text().split() for k in range(2)]
    assert [len(images) for images in decoded] == [32, 32]  # each worker decoded half the folder, once
    assert not set(decoded[0]) & set(decoded[1]) and len(set(decoded[0]) | set(decoded[1])) == 64


@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_worker_stops_the_other_cleanly(slim_model, tmp_path, killed):
    model = slim_model("seed")
    data = tmp_path / "calib.npy"
    np.save(data, np.concatenate([np.load(model.calib)] * 10))  # 320 batches of 8: the run outlasts the kill
    ports = free_ports(2)
    workers = [_worker(ports, k, "recalibrate", model.prefix, data, "-o", tmp_path / f"out{k}", "--batch-size", 8,
                       "--no-progress") for k in range(2)]
    # killed once both have joined the cluster: each says so in a notice before its pass
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline and workers[killed].poll() is None and \
            not all("of the TF_CONFIG cluster" in worker.peek()[1] for worker in workers):
        time.sleep(0.1)
    assert workers[killed].poll() is None, "the worker ended before it could be killed"
    workers[killed].kill()
    killed_at = time.monotonic()
    code, out, err = _finish(workers[1 - killed], timeout=180)
    workers[killed].communicate()

    assert code == 1, err[-3000:]
    assert (f"error: worker {1 - killed} of 2: worker {killed} stopped answering (died, killed or cut off); "
            "nothing was written") in err
    assert "Traceback" not in err
    assert time.monotonic() - killed_at < 120
    assert not (tmp_path / "out0").exists() and not (tmp_path / "out1").exists()


@pytest.mark.parametrize("started", [0, 1])
def test_a_worker_that_never_starts_stops_the_other_within_the_timeout(slim_model, tmp_path, started):
    """Issue 26: TensorFlow's own wait for a missing task is an hour; --cluster-timeout bounds it, the error names
    the missing worker (the leader's list when the chief runs, the leader itself when it is the missing one)."""
    model = slim_model("seed")
    timeout = 8
    ports = free_ports(2)
    began = time.monotonic()
    worker = _worker(ports, started, "recalibrate", model.prefix, model.calib, "-o", tmp_path / "out",
                     "--cluster-timeout", timeout, "--no-progress", user_logging=True)
    code, out, err = _finish(worker, timeout=120)
    took = time.monotonic() - began

    missing = 1 - started
    assert code == 1, err[-3000:]
    assert err.startswith(f"error: worker {started} of 2: worker {missing}"), err[-3000:]
    assert f"did not join the TF_CONFIG cluster within {timeout} s (--cluster-timeout); nothing was written" in err
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err
    assert not (tmp_path / "out").exists()
    assert timeout <= took < timeout + 60, took  # start-up (TensorFlow's import) and shutdown on top of the wait
