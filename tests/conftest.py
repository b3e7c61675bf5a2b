"""Shared fixtures: real tf-slim checkpoints with stale BN statistics, built once per session and variant.

Marks (registered in pyproject.toml): ``subprocess`` for tests that start processes (CLI runs, fresh interpreters,
the slim fixtures, which train in subprocesses: given to every test using ``slim_model``), ``corpus`` for the
published-model tests (given to everything under tests/corpus). ``make test-fast`` deselects both.
``--random-order-seed N`` runs the collected tests in a shuffled order (the suite must not depend on its order).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

# Every process of the suite computes with TensorFlow's Eigen CPU kernels, as the CLI does (cli/app.py main()),
# whatever this CPU's oneDNN default: set before anything imports TensorFlow, inherited by every subprocess.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from fixtures.runner import SlimModel, build, build_many

CORPUS = Path(__file__).parent / "corpus"


def pytest_addoption(parser):
    parser.addoption("--random-order-seed", type=int, default=None, metavar="N",
                     help="run the collected tests in an order shuffled with seed N")


@pytest.hookimpl(tryfirst=True)  # marks given before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if CORPUS in item.path.parents:
            item.add_marker(pytest.mark.corpus)
        if "slim_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.subprocess)
    seed = config.getoption("--random-order-seed")
    if seed is not None:
        random.Random(seed).shuffle(items)


def pytest_report_header(config):
    seed = config.getoption("--random-order-seed")
    return None if seed is None else f"random order: --random-order-seed {seed}"


class SlimModels:
    """``slim_model(variant) -> SlimModel``: trains each variant once per session (~7 s each).

    ``slim_model.prebuild(variants)`` builds the missing ones concurrently first.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory):
        self._tmp = tmp_path_factory
        self._built: dict[str, SlimModel] = {}

    def __call__(self, variant: str) -> SlimModel:
        if variant not in self._built:
            self._built[variant] = build(variant, self._tmp.mktemp(variant))
        return self._built[variant]

    def prebuild(self, variants) -> None:
        missing = [v for v in dict.fromkeys(variants) if v not in self._built]
        if missing:
            self._built.update(build_many({v: self._tmp.mktemp(v) for v in missing}))


@pytest.fixture(scope="session")
def slim_model(tmp_path_factory) -> SlimModels:
    return SlimModels(tmp_path_factory)


@pytest.fixture(scope="session")
def large_set(slim_model, tmp_path_factory) -> Path:
    """4,096 samples of the seed model's task (``.npy``): its 256 calibration images, each 16 times with pixel
    noise, shuffled: for ``--until-stable``, far more than the statistics need."""
    import numpy as np

    calib = np.load(slim_model("seed").calib)
    rng = np.random.default_rng(0)
    big = np.concatenate([calib + rng.normal(0, 0.05, calib.shape).astype(np.float32) for _ in range(16)])
    path = tmp_path_factory.mktemp("large") / "large.npy"
    np.save(path, big[rng.permutation(len(big))])
    return path
