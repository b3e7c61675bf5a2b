"""Running ckptfix in subprocesses for the scaling tests, and comparing the statistics of two reports."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np

import forked

SCRIPT = Path(__file__).with_name("run_ckptfix.py")
TIMEOUT_SECONDS = 240
ROOT = Path(__file__).parents[2]


def environment(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_api(checkpoint, data, report: Path, *, logical_cpus: int = 1, command: str = "recalibrate", **options) -> dict:
    """``ckptfix.<command>(checkpoint, np.load(data), **options)`` in a process of its own; its report as a dict."""
    result = forked.run(
        [sys.executable, str(SCRIPT), "--logical-cpus", str(logical_cpus), "--command", command,
         "--options", json.dumps(options), "--report", str(report), str(checkpoint), str(data)],
        timeout=TIMEOUT_SECONDS, env=environment(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(report.read_text())


def statistics(report: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {layer["name"]: (np.array(layer["new_mean"]), np.array(layer["new_variance"])) for layer in report["layers"]}


def assert_same_statistics(a: dict, b: dict, rtol: float = 1e-6) -> None:
    """Every layer's new mean and variance equal within ``rtol`` relative (to the layer's scale for the mean)."""
    first, second = statistics(a), statistics(b)
    assert first.keys() == second.keys() and first
    for name, (mean, variance) in first.items():
        other_mean, other_variance = second[name]
        scale = np.sqrt(variance) + np.abs(mean)
        assert np.all(np.abs(mean - other_mean) <= rtol * scale), name
        np.testing.assert_allclose(other_variance, variance, rtol=rtol, err_msg=name)
    for layer_a, layer_b in zip(a["layers"], b["layers"]):
        assert layer_a["count"] == layer_b["count"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})
