"""A report dict from a real diagnose run, for the render tests."""

import numpy as np
import pytest

import ckptfix


@pytest.fixture(scope="session")
def real_report(slim_model) -> dict:
    """``ckptfix.diagnose`` on the stale seed fixture, as a dict."""
    model = slim_model("seed")
    return ckptfix.diagnose(model.prefix, np.load(model.calib)).to_dict()
