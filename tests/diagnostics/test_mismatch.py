"""Issue 33 item 3: calibration data preprocessed unlike the training data stops the write, and diagnose
gives no verdict; the reason names the presets that would fit. Truth from outside: the held-out accuracy of
what would have been written."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))

import convention_models as cm  # noqa: E402
import forked  # noqa: E402
from ckptfix.diagnostics.mismatch import (  # noqa: E402
    IMAGE_MEAN_SIGMAS, LOG_VARIANCE, MEAN_SIGMAS, SCALES, first_layer_mismatch)


def _layer(old_mean, old_var, new_mean, new_var, epsilon=1e-3):
    as_array = lambda v: np.asarray(v, np.float64)  # noqa: E731
    return SimpleNamespace(name="bn1", old_mean=as_array(old_mean), old_variance=as_array(old_var),
                           new_mean=as_array(new_mean), new_variance=as_array(new_var), epsilon=epsilon)


@pytest.mark.parametrize("factor, found", [(4.0, True), (1 / 4.0, True), (3.2, True), (2.5, False), (1.3, False)])
def test_variance_off_by_more_than_three_times_is_a_mismatch(factor, found):
    old = np.array([0.5, 2.0, 8.0, 1.0])
    got = first_layer_mismatch(_layer(np.zeros(4), old, np.zeros(4), old * factor, epsilon=0.0), "inception")
    assert (got is not None) == found
    assert math.log(3.0) == LOG_VARIANCE


def test_mean_many_stored_deviations_away_is_a_mismatch():
    old = np.full(3, 4.0)  # stored sigma 2
    assert first_layer_mismatch(_layer(np.ones(3), old, 1 + np.full(3, 2 * MEAN_SIGMAS * 1.01), old), None) is not None
    assert first_layer_mismatch(_layer(np.ones(3), old, 1 + np.full(3, 2 * MEAN_SIGMAS * 0.9), old), None) is None


def test_images_through_a_preset_are_held_closer_unless_a_cause_explains_the_drift():
    old = np.full(3, 4.0)
    moved = _layer(np.ones(3), old, 1 + np.full(3, 2 * IMAGE_MEAN_SIGMAS * 1.05), old)
    assert first_layer_mismatch(moved, "inception") is not None  # images, nothing explains the drift
    assert first_layer_mismatch(moved, "inception", explained=True) is None  # the update ops never ran
    assert first_layer_mismatch(moved, None) is None  # arrays: the stored statistics may be another domain's
    assert first_layer_mismatch(_layer(np.ones(3), old, 1 + np.full(3, 2 * IMAGE_MEAN_SIGMAS * 0.9), old),
                                "inception") is None


def test_initial_statistics_say_nothing():
    assert first_layer_mismatch(_layer(np.zeros(3), np.ones(3), np.full(3, 500.0), np.full(3, 1e4)), "raw") is None


@pytest.mark.parametrize("chosen, trained, fits", [
    ("inception", "unit", "unit"),    # [-1, 1] into a model trained on [0, 1]: variance x4
    ("raw", "inception", "inception"),  # pixels into a model trained on [-1, 1]: x127.5^2
    ("unit", "raw", "raw"),
])
def test_the_presets_that_fit_the_stored_scale_come_first(chosen, trained, fits):
    scales = {"inception": 1 / 127.5, "unit": 1 / 255, "raw": 1.0}
    old = np.array([0.3, 1.2, 0.7]) * scales[trained] ** 2
    new = old * (scales[chosen] / scales[trained]) ** 2
    got = first_layer_mismatch(_layer(np.zeros(3), old, np.zeros(3), new, epsilon=0.0), chosen)
    assert SCALES[got.fits[0]] == SCALES[fits] and fits in got.fits  # raw, vgg, caffe: one scale, named together
    assert f"--preprocess {fits}" in got.message.split("the stored scale fits ")[1]


SIZE = 32  # the tests' images: on 16x16 ones the model's zero padding takes a larger share of what bn1 sees


def _cli(*args, exit_code: int = 0) -> tuple[dict | None, str]:
    run = forked.run([sys.executable, "-m", "ckptfix", *map(str, args), "--no-progress", "--json"],
                     env=dict(os.environ), timeout=600)
    assert run.returncode == exit_code, run.stderr
    return (json.loads(run.stdout) if run.stdout.strip() else None), run.stderr


@pytest.fixture(scope="module")
def healthy_unit(tmp_path_factory):
    """A healthy Keras 3 model (statistics followed training) trained on pixels / 255, scaling nothing itself."""
    import keras

    folder = tmp_path_factory.mktemp("healthy_unit")
    keras.utils.set_random_seed(0)
    model = cm.small_cnn(keras, SIZE, momentum=0.9)
    x, y = cm.pixels(512, SIZE, 1)
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(cm.preprocess(x, "unit"), y, batch_size=32, epochs=8, verbose=0)
    model.save(folder / "model.keras")
    held = cm.pixels(256, SIZE, 2)
    return SimpleNamespace(model=folder / "model.keras", pngs=cm.write_pngs(folder / "pngs", cm.pixels(128, SIZE, 3)[0]),
                           evaluate=lambda path: cm.accuracy(keras.saving.load_model(path)(
                               cm.preprocess(held[0], "unit"), training=False), held[1]))


@pytest.mark.subprocess
def test_data_preprocessed_unlike_training_stops_the_write(healthy_unit, tmp_path):
    """[-1, 1] images into a model trained on [0, 1]: refused (exit 5, nothing written) and no diagnosis; what
    --force writes is measurably worse, and the preset the reason names repairs without loss."""
    case = healthy_unit
    before = case.evaluate(case.model)
    assert before >= 0.9
    _, stderr = _cli("recalibrate", case.model, case.pngs, "--preprocess", "inception", "-o", tmp_path / "a.keras",
                     exit_code=5)
    assert not (tmp_path / "a.keras").exists()
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("error: repair refused, nothing was written: the first BN layer bn1 sees a mean"), error
    assert "preprocessed unlike the training data; check --preprocess" in error
    diagnosis, _ = _cli("diagnose", case.model, case.pngs, "--preprocess", "inception", exit_code=5)
    assert diagnosis["verdict"] == "inconclusive" and diagnosis["gate"]["reasons"][0].startswith("the first BN layer")
    _cli("recalibrate", case.model, case.pngs, "--preprocess", "inception", "--force", "-o", tmp_path / "forced.keras")
    _cli("recalibrate", case.model, case.pngs, "--preprocess", "unit", "-o", tmp_path / "right.keras")
    forced, right = case.evaluate(tmp_path / "forced.keras"), case.evaluate(tmp_path / "right.keras")
    assert forced < before - 0.2 and right >= before - 0.02, (before, forced, right)


def test_the_api_names_keywords_in_reasons_and_notices(healthy_unit):
    """Item 5: the API's refusal, its report's reasons and its notices name keywords, not flags."""
    import ckptfix
    from ckptfix.errors import RepairRefused

    heard = []
    with pytest.raises(RepairRefused) as refused:
        ckptfix.recalibrate(healthy_unit.model, healthy_unit.pngs, preprocess="inception", on_notice=heard.append,
                            output=healthy_unit.model.with_name("never.keras"))
    message, report = str(refused.value), refused.value.report
    assert "check preprocess (or the arrays' scale)" in message and "Pass force=True" in message
    assert "--" not in message
    assert all("--" not in text for text in [*report.notices, *report.gate.reasons, *report.gate.warnings, *heard])
    assert any("preprocessed with preprocess=\"inception\"" in text for text in heard), heard
