"""Fixtures shared by the storage tests."""

from __future__ import annotations

import pytest
from storage_support import BACKENDS, Harness


@pytest.fixture(params=BACKENDS)
def harness(request, tmp_path):
    """Each backend in turn, opened over a fresh directory with small limits."""
    h = Harness(request.param, str(tmp_path / "data"))
    yield h
    h.close()
