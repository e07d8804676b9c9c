"""Finding storage backends and state machines by name among Twisted plugins.

Plugins live as modules in a ``twisted/plugins/`` directory on ``sys.path`` (no
``__init__.py`` there). A third party adds a storage engine by dropping in a module
that defines an object providing ``twisted.plugin.IPlugin`` and
``kvraft.interfaces.IStorageBackend`` (or ``IStateMachinePlugin``); the configuration
then names it (``storage.backend = "<name>"``). Plugin modules should stay tiny and
import their real code only when used: discovery imports every plugin module.
"""

from __future__ import annotations

import importlib
import types

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from kvraft.interfaces import IStateMachinePlugin, IStorageBackend

__all__ = [
    "LazyStorageBackend",
    "find_state_machine_plugin",
    "find_storage_backend",
    "state_machine_plugins",
    "storage_backends",
]


@implementer(IPlugin, IStorageBackend)
class LazyStorageBackend:
    """A storage plugin that imports ``module`` only when ``open`` is called, then
    calls its ``factory(data_dir, options)``."""

    def __init__(self, name: str, description: str, module: str,
                 factory: str = "open_storage"):
        self.name = name
        self.description = description
        self.module = module
        self.factory = factory

    def open(self, data_dir: str, options: dict):
        """Import the backend module and open the stores under ``data_dir``."""
        opener = getattr(importlib.import_module(self.module), self.factory)
        return opener(data_dir, options)

    def __repr__(self) -> str:
        return f"<LazyStorageBackend {self.name!r} from {self.module}>"


def storage_backends(package: types.ModuleType | None = None) -> dict[str, IStorageBackend]:
    """Every storage plugin under ``package`` (default ``twisted.plugins``), by name."""
    return _by_name(IStorageBackend, "storage backend", package)


def state_machine_plugins(
        package: types.ModuleType | None = None) -> dict[str, IStateMachinePlugin]:
    """Every state-machine plugin under ``package`` (default ``twisted.plugins``)."""
    return _by_name(IStateMachinePlugin, "state machine plugin", package)


def find_storage_backend(name: str, package: types.ModuleType | None = None):
    """The storage plugin called ``name``; ``ValueError`` listing the available names
    if there is none."""
    return _find(storage_backends(package), name, "storage backend", "storage.backend")


def find_state_machine_plugin(name: str, package: types.ModuleType | None = None):
    """The state-machine plugin called ``name``; ``ValueError`` listing the available
    names if there is none."""
    return _find(state_machine_plugins(package), name, "state machine plugin",
                 "state_machine.plugin")


def _by_name(interface, kind: str, package) -> dict:
    found: dict = {}
    for plugin in getPlugins(interface, package):
        name = plugin.name
        if name in found and found[name] is not plugin:
            raise ValueError(
                f"two {kind}s are named {name!r} ({found[name].description!r} and "
                f"{plugin.description!r}): remove or rename one of their modules in "
                "twisted/plugins/")
        found[name] = plugin
    return found


def _find(plugins: dict, name: str, kind: str, key: str):
    try:
        return plugins[name]
    except KeyError:
        available = ", ".join(sorted(plugins)) or "none"
        raise ValueError(
            f"unknown {kind} {name!r} (set by {key}); available: {available}. A third-party "
            "plugin must be a module in a twisted/plugins/ directory on sys.path.") from None
