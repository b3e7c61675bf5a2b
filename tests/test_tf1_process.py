"""Issue 14 item 6: the Python API inside a TF1-style process (``disable_v2_behavior()`` or
``disable_eager_execution()``, as TF1 deployment pipelines start) repairs a tf-slim checkpoint and a Keras
file, and leaves the process in graph mode as it found it. Each run is a fresh interpreter, since those
switches are process-wide."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.subprocess  # each test starts processes

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

getattr(tf.compat.v1, sys.argv[1])()
assert not tf.executing_eagerly()
import ckptfix

prefix, calib, keras_file, keras_data, out = sys.argv[2:]
slim = ckptfix.recalibrate(prefix, calib, output=out + "/slim/model.ckpt", progress=False)
after_slim = tf.executing_eagerly()
keras = ckptfix.recalibrate(keras_file, np.load(keras_data), output=out + "/fixed.keras", progress=False)
print(json.dumps({
    "slim_written": slim.output_checkpoint,
    "slim_before": slim.agreement.top1_before, "slim_after": slim.agreement.top1_after,
    "keras_written": keras.output_checkpoint, "keras_layers": len(keras.layers),
    "eager_after_slim": after_slim, "eager_at_end": tf.executing_eagerly(),
}))
"""


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """A small trained Keras 3 model saved as ``.keras``, and 64 calibration images as ``.npy``."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "keras"))
    import keras
    import keras_models as km

    folder = tmp_path_factory.mktemp("tf1_keras")
    model = km.functional_model(keras, nested=False)
    x, y = km.images(64)
    km.train(keras, model, x, y, epochs=1)
    model.save(folder / "model.keras")
    np.save(folder / "calib.npy", x)
    return folder / "model.keras", folder / "calib.npy"


@pytest.mark.parametrize("switch", ["disable_v2_behavior", "disable_eager_execution"])
def test_api_in_a_tf1_style_process(switch, slim_model, keras_file, tmp_path):
    model = slim_model("seed")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, switch, model.prefix, str(model.calib), *map(str, keras_file), str(tmp_path)],
        capture_output=True, text=True, env=dict(os.environ), timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["slim_after"] >= 0.95 and result["slim_after"] > result["slim_before"], result  # recovered
    assert os.path.exists(result["slim_written"] + ".index") and os.path.exists(result["keras_written"])
    assert result["keras_layers"] >= 2
    assert result["eager_after_slim"] is False and result["eager_at_end"] is False  # the mode left as found
