"""Shared pytest configuration: the --runslow flag gates long soak and chaos runs; the
log_events fixture collects Twisted log events."""

import pytest
from twisted.logger import globalLogPublisher


def pytest_addoption(parser):
    parser.addoption(
        "--runslow", action="store_true", default=False,
        help="also run tests marked slow (long simulation, soak and chaos profiles)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def log_events():
    """Twisted log events emitted during the test (a list of event dicts)."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
