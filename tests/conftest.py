"""Shared fixtures: real tf-slim checkpoints with stale BN statistics, built once per session and variant."""

from __future__ import annotations

import pytest

from fixtures.runner import SlimModel, build, build_many


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
