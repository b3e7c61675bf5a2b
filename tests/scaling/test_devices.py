"""Several local devices (two logical CPU devices, in fresh processes): whole batches per device, the same
statistics as a one-device run, for both batch orders and a batch count the devices do not divide evenly."""

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import ckptfix
from ckptfix.cli.app import app
from ckptfix.errors import CkptfixError
from diagnostics.schema import validate_report
from scaling.helpers import assert_same_statistics, run_api

sys.path.insert(0, str(Path(__file__).parents[1] / "keras"))

# 256 calibration samples in batches of 24: 10 full batches and one of 16, 11 in all (odd: two devices
# cannot split them evenly)
BATCH_SIZE, BATCHES = 24, 11


def _check_devices(report: dict, devices: list[str]) -> None:
    rows = report["devices"]
    assert [row["device"] for row in rows] == devices
    assert all(row["batches"] > 0 and row["worker"] == 0 for row in rows)
    assert sum(row["batches"] for row in rows) == report["num_batches"] == BATCHES
    assert sum(row["samples"] for row in rows) == report["num_samples"] == 256


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_logical_cpus_match_one_device_on_a_slim_checkpoint(slim_model, tmp_path, shuffle):
    model = slim_model("seed")
    options = dict(batch_size=BATCH_SIZE, shuffle=shuffle, seed=3)
    one = ckptfix.recalibrate(model.prefix, np.load(model.calib), output=tmp_path / "one", **options).to_dict()
    two = run_api(model.prefix, model.calib, tmp_path / "two.json", logical_cpus=2, output=str(tmp_path / "two"),
                  **options)

    assert_same_statistics(one, two)
    validate_report(two)
    _check_devices(two, ["/CPU:0", "/CPU:1"])
    assert [row["device"] for row in one["devices"]] == ["/CPU:0"]
    assert two["agreement"]["top1_after"] == one["agreement"]["top1_after"]


@pytest.mark.subprocess
def test_two_logical_cpus_match_one_device_on_a_keras_model(tmp_path):
    import keras

    from keras_models import functional_model, images

    path = tmp_path / "small.keras"
    functional_model(keras).save(path)
    data = tmp_path / "calib.npy"
    np.save(data, images(256, seed=5)[0])
    options = dict(batch_size=BATCH_SIZE, shuffle=True, seed=1)
    one = ckptfix.diagnose(path, np.load(data), **options).to_dict()
    two = run_api(path, data, tmp_path / "two.json", logical_cpus=2, command="diagnose", devices="/CPU:1,/CPU:0", **options)

    assert_same_statistics(one, two)
    _check_devices(two, ["/CPU:1", "/CPU:0"])


def test_a_device_that_is_not_visible_is_named_with_the_visible_ones(slim_model):
    model = slim_model("seed")
    with pytest.raises(CkptfixError, match=r"/GPU:3 not visible; this process sees /CPU:0"):
        ckptfix.diagnose(model.prefix, np.load(model.calib), devices="/GPU:3")
    with pytest.raises(CkptfixError, match=r"devices=4: only 1 CPU device\(s\) visible \(/CPU:0\)"):
        ckptfix.diagnose(model.prefix, np.load(model.calib), devices=4)


def test_a_malformed_devices_option_is_a_usage_error():
    result = CliRunner().invoke(app, ["diagnose", "ckpt", "data", "--devices", "gpu0"])
    assert result.exit_code == 2
    assert "'gpu0' is not a device name" in result.output
