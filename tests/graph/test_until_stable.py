"""``until_stable``: the pass stops as soon as every layer's standard errors are below the tolerance, with the
statistics of exactly the batches it read (the same on two devices), and the reported standard errors are
honest on a real model: over random subsets of a larger set, the spread of the recomputed statistics matches
them."""

from __future__ import annotations

import numpy as np
import pytest

import ckptfix
from scaling.helpers import assert_same_statistics, run_api

pytestmark = pytest.mark.subprocess  # CLI runs and fresh interpreters (make test-fast leaves them out)


def test_stops_when_stable_with_the_statistics_of_what_it_read(slim_model, large_set, tmp_path):
    """Read in a random order (the default): any first part is a random sample, so the pass may stop early."""
    model = slim_model("seed")
    options = dict(batch_size=16, agreement_samples=0)
    stopped = ckptfix.diagnose(model.prefix, large_set, until_stable=0.02, **options)
    assert stopped.stop_reason == "stable" and stopped.num_samples < 4096 // 4
    assert all(layer.mean_standard_error < 0.02 and layer.variance_relative_error < 0.02 for layer in stopped.layers)
    same = ckptfix.diagnose(model.prefix, large_set, num_samples=stopped.num_samples, **options)
    assert same.stop_reason == "num-samples"
    for a, b in zip(stopped.layers, same.layers):
        np.testing.assert_array_equal(a.new_mean, b.new_mean)
        np.testing.assert_array_equal(a.new_variance, b.new_variance)
    full = ckptfix.diagnose(model.prefix, large_set, **options)
    assert full.stop_reason == "data" and full.num_samples == 4096
    for a, b in zip(stopped.layers, full.layers):  # the early answer is the full one within 3 standard errors
        scale = np.sqrt(b.new_variance + b.epsilon)
        assert np.all(np.abs(a.new_mean - b.new_mean) / scale <= 3 * a.mean_standard_errors + 1e-12)
        assert np.all(np.abs(a.new_variance - b.new_variance) / (b.new_variance + b.epsilon)
                      <= 3 * a.variance_relative_errors + 1e-12)
    two = run_api(model.prefix, large_set, tmp_path / "two.json", logical_cpus=2, command="diagnose", devices=2,
                  until_stable=0.02, **options)
    assert two["num_samples"] == stopped.num_samples and two["stop_reason"] == "stable"
    assert_same_statistics(stopped.to_dict(), two)


def test_data_in_the_callers_order_is_read_to_its_end(slim_model, large_set):
    """``shuffle=False`` (or a list of batches): the order is the caller's, e.g. sorted by class, so a first part
    need not represent the rest however stable its statistics look: read to the end, with a notice."""
    model = slim_model("seed")
    data = np.load(large_set)
    for given, shuffle in ((large_set, False), ([data[k:k + 16] for k in range(0, len(data), 16)], True)):
        report = ckptfix.diagnose(model.prefix, given, batch_size=16, shuffle=shuffle, agreement_samples=0,
                                  until_stable=0.02)
        assert report.stop_reason == "data" and report.num_samples == 4096
        assert any("until_stable reads all the data" in notice for notice in report.notices)  # the API's words


def test_reported_standard_errors_are_honest_on_a_real_model(slim_model, large_set):
    """Twelve disjoint subsets of 320 samples: the spread of each channel's recomputed mean and variance across
    them against the mean reported standard error, per layer (RMS over channels), within a factor of 1.5."""
    model = slim_model("seed")
    data = np.load(large_set)
    runs = [ckptfix.diagnose(model.prefix, data[k * 320:(k + 1) * 320], batch_size=16, shuffle=False,
                             agreement_samples=0) for k in range(12)]
    for index in range(len(runs[0].layers)):
        layers = [run.layers[index] for run in runs]
        scale = np.sqrt(np.mean([layer.new_variance for layer in layers], 0) + layers[0].epsilon)
        observed_mean = np.std([layer.new_mean for layer in layers], 0, ddof=1) / scale
        reported_mean = np.mean([layer.mean_standard_errors for layer in layers], 0)
        observed_var = np.std([np.log(layer.new_variance + layer.epsilon) for layer in layers], 0, ddof=1)
        reported_var = np.mean([layer.variance_relative_errors for layer in layers], 0)
        rms = lambda v: float(np.sqrt(np.mean(np.square(v))))  # noqa: E731
        for observed, reported in ((observed_mean, reported_mean), (observed_var, reported_var)):
            ratio = rms(reported) / rms(observed)
            assert 1 / 1.5 < ratio < 1.5, (layers[0].name, ratio)


def test_until_stable_in_the_cli_says_why_it_stopped(slim_model, large_set):
    from cli.test_errors import run_cli

    result = run_cli("diagnose", slim_model("seed").prefix, large_set, "--until-stable", "0.05", "--batch-size", "16",
                     "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "every layer's standard errors fell below --until-stable" in result.stdout
    assert "± mean/var" in result.stdout
    bad = run_cli("diagnose", slim_model("seed").prefix, large_set, "--until-stable", "2")
    assert bad.returncode == 2 and "--until-stable must be between 0 and 1" in bad.stderr
