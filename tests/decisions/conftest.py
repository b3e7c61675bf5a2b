"""The catalogue, shared by every test of the package: each subject, held-out set and oracle built once."""

from __future__ import annotations

import pytest

from decisions.catalogue import Catalogue


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory, slim_model) -> Catalogue:
    return Catalogue(tmp_path_factory.mktemp("decisions"), slim_model)
