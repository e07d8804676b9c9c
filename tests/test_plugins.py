"""Plugin discovery: built-in backends by name, and third-party plugins dropped into a
plugin directory, found and used."""

from __future__ import annotations

import importlib
import subprocess
import sys
import uuid

import pytest
from zope.interface.verify import verifyObject

import twisted.plugins
from kvraft.interfaces import IStateMachinePlugin, IStorage, IStorageBackend
from kvraft.plugins import (
    find_state_machine_plugin,
    find_storage_backend,
    storage_backends,
)
from kvraft.raft.types import Entry, HardState

THIRD_PARTY = '''
"""A third party's storage engine and state machine, as an operator would drop it in."""
from twisted.plugin import IPlugin
from zope.interface import implementer

from kvraft.interfaces import IStateMachinePlugin, IStorageBackend


@implementer(IPlugin, IStorageBackend)
class ThirdPartyBackend:
    name = "{backend}"
    description = "a third-party engine (memory underneath, tagged)"

    def open(self, data_dir, options):
        from kvraft.storage.memory import open_storage

        storage = open_storage(data_dir, options)
        storage.made_by = "{backend}"
        return storage


class Counter:
    def __init__(self, start):
        self.total = start
        self.last_applied = 0

    def apply(self, index, command):
        self.total += command
        self.last_applied = index
        return self.total


@implementer(IPlugin, IStateMachinePlugin)
class CounterPlugin:
    name = "{machine}"
    description = "adds numbers"

    def create(self, options):
        return Counter(options.get("start", 0))


backend = ThirdPartyBackend()
machine = CounterPlugin()
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A fresh ``<tmp>/twisted/plugins`` directory on ``twisted.plugins.__path__``, as a
    deployment would add one; yields a function that writes a plugin module into it."""
    directory = tmp_path / "twisted" / "plugins"
    directory.mkdir(parents=True)
    monkeypatch.setattr(twisted.plugins, "__path__",
                        [*twisted.plugins.__path__, str(directory)])
    written: list[str] = []

    def write(source: str) -> str:
        module = f"thirdparty_{uuid.uuid4().hex[:8]}"
        (directory / f"{module}.py").write_text(source)
        written.append(f"twisted.plugins.{module}")
        importlib.invalidate_caches()
        return module

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_the_built_in_backends_are_found_by_name():
    for name in ("wal", "sqlite", "memory"):
        backend = find_storage_backend(name)
        assert verifyObject(IStorageBackend, backend)
        assert backend.name == name and backend.description
    assert {"wal", "sqlite", "memory"} <= set(storage_backends())


@pytest.mark.parametrize("name", ["wal", "sqlite", "memory"])
def test_a_built_in_backend_opens_a_working_storage(name, tmp_path):
    storage = find_storage_backend(name).open(str(tmp_path / "data"), {})
    try:
        assert verifyObject(IStorage, storage)
        storage.log.append([Entry(term=1, index=1, data=b"x")])
        storage.log.sync()
        assert storage.log.entries(1, 2) == [Entry(term=1, index=1, data=b"x")]
    finally:
        storage.close()


def test_an_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError) as info:
        find_storage_backend("rocksdb")
    message = str(info.value)
    assert "unknown storage backend 'rocksdb'" in message
    assert "memory, sqlite, wal" in message
    with pytest.raises(ValueError, match="unknown state machine plugin 'nope'"):
        find_state_machine_plugin("nope")


def test_the_plugin_module_imports_no_backend_until_one_is_opened():
    # A fresh interpreter: discovery must stay cheap, so importing the plugin module
    # must not pull in the WAL, SQLite or snapshot code.
    code = ("import sys, twisted.plugins.kvraft_storage as p; "
            "print(sorted(m for m in sys.modules if m.startswith('kvraft.storage.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert "kvraft.storage.wal" not in out and "kvraft.storage.sqlite" not in out, out
    assert "sqlite3" not in out


def test_a_third_party_backend_dropped_into_a_plugin_directory_is_found_and_used(
        plugin_dir, tmp_path):
    backend_name = f"engine-{uuid.uuid4().hex[:6]}"
    plugin_dir(THIRD_PARTY.format(backend=backend_name, machine="unused-" + backend_name))
    backend = find_storage_backend(backend_name)
    assert verifyObject(IStorageBackend, backend)
    storage = backend.open(str(tmp_path / "data"), {})
    assert storage.made_by == backend_name  # really the third party's code
    storage.log.append([Entry(term=2, index=1, data=b"a"), Entry(term=2, index=2)])
    storage.stable.save_hard_state(HardState(term=2, vote="n1", commit=1))
    assert [e.data for e in storage.log.entries(1, 3)] == [b"a", b""]
    assert storage.stable.hard_state().vote == "n1"
    # The built-ins are still there next to it.
    assert {"wal", "sqlite", "memory", backend_name} <= set(storage_backends())


def test_a_third_party_state_machine_is_found_and_used(plugin_dir):
    machine_name = f"counter-{uuid.uuid4().hex[:6]}"
    plugin_dir(THIRD_PARTY.format(backend="unused-" + machine_name, machine=machine_name))
    plugin = find_state_machine_plugin(machine_name)
    assert IStateMachinePlugin.providedBy(plugin)
    machine = plugin.create({"start": 10})
    assert machine.apply(1, 5) == 15 and machine.last_applied == 1


def test_a_plugin_package_can_be_passed_explicitly(tmp_path, monkeypatch):
    package_name = f"thirdparty_pkg_{uuid.uuid4().hex[:8]}"
    package_dir = tmp_path / package_name
    package_dir.mkdir()
    (package_dir / "__init__.py").write_text("")
    (package_dir / "engines.py").write_text(
        THIRD_PARTY.format(backend="pkg-engine", machine="pkg-machine"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        package = importlib.import_module(package_name)
        assert find_storage_backend("pkg-engine", package).name == "pkg-engine"
        assert find_state_machine_plugin("pkg-machine", package).name == "pkg-machine"
        with pytest.raises(ValueError, match="available: pkg-engine"):
            find_storage_backend("wal", package)  # only that package is searched
    finally:
        for name in [m for m in sys.modules if m.startswith(package_name)]:
            del sys.modules[name]


def test_two_plugins_with_one_name_are_refused(plugin_dir):
    name = f"twin-{uuid.uuid4().hex[:6]}"
    plugin_dir(THIRD_PARTY.format(backend=name, machine="m1-" + name))
    plugin_dir(THIRD_PARTY.format(backend=name, machine="m2-" + name))
    with pytest.raises(ValueError, match=f"two storage backends are named '{name}'"):
        find_storage_backend(name)
