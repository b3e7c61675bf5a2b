"""Shared fixtures: real tf-slim checkpoints with stale BN statistics, built once per session and variant."""

import pytest

from fixtures.runner import SlimModel, build


@pytest.fixture(scope="session")
def slim_model(tmp_path_factory):
    """``slim_model(variant) -> SlimModel``; each variant is trained once per test session."""
    built: dict[str, SlimModel] = {}

    def get(variant: str) -> SlimModel:
        if variant not in built:
            built[variant] = build(variant, tmp_path_factory.mktemp(variant))
        return built[variant]

    return get
