"""Fixtures shared by the storage tests."""

from __future__ import annotations

import pytest
from storage_support import BACKENDS, Harness
from twisted.logger import globalLogPublisher


@pytest.fixture
def log_events():
    """Twisted log events emitted during the test (a list of event dicts)."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture(params=BACKENDS)
def harness(request, tmp_path):
    """Each backend in turn, opened over a fresh directory with small limits."""
    h = Harness(request.param, str(tmp_path / "data"))
    yield h
    h.close()
