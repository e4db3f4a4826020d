"""Shared pytest fixtures: location of ../shared/data (tests skip with a reason when absent)."""
from __future__ import annotations

import pytest

from simfoe.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data():
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data is absent (public reference data is read in place, not shipped)")
    return d
