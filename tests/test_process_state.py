"""Issue 25 item 14: ckptfix leaves its host process's environment as it found it.

The API used to set ``TF_ENABLE_ONEDNN_OPTS=0`` (and ``TF_CPP_MIN_LOG_LEVEL``) in its host's environment on its
first call. ``TF_ENABLE_ONEDNN_OPTS`` picks TensorFlow's CPU kernels (oneDNN or Eigen), so every process the host
started afterwards (a deployment pipeline's next step, the test suite's CLI runs and fixture builds) computed
differently from the ones started before, and from the host itself when it had imported TensorFlow first: on
musicnn's batch_normalization_9 the moving mean moved by 0.067 of sqrt(var + eps) between the two settings.
The CLI, which owns its process, still picks Eigen's kernels (cli/app.py ``main``), -v or not."""

import json
import os
import subprocess
import sys

import pytest

from ckptfix import _quiet

SWITCHES = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")

API_CALL = r"""
import json, os, sys
import tensorflow  # what TensorFlow's own import sets (TF2_BEHAVIOR...) is not ckptfix's doing
import ckptfix

before = dict(os.environ)
ckptfix.inspect(sys.argv[1])
after = dict(os.environ)
print(json.dumps({k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}))
"""


def test_quieting_tensorflows_python_logs_leaves_the_environment_alone():
    before = dict(os.environ)
    _quiet.silence_tensorflow()
    assert dict(os.environ) == before


@pytest.mark.subprocess
def test_an_api_call_leaves_the_hosts_environment_alone(slim_model):
    """In a fresh host without the switches set (a deployment pipeline's process, TensorFlow imported), what its
    child processes see is the same after an API call as before."""
    model = slim_model("seed")
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    run = subprocess.run([sys.executable, "-c", API_CALL, model.prefix], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {}
