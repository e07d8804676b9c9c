"""kvraft's built-in state machines, found with ``getPlugins(IStateMachinePlugin)``.

Kept tiny and lazy: plugin discovery imports every module in this folder, so the
machine itself is imported only when ``create`` is called.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from kvraft.interfaces import IStateMachinePlugin


@implementer(IPlugin, IStateMachinePlugin)
class _KvMachinePlugin:
    name = "kv"
    description = "Redis-compatible string key-value store (GET, SET, INCR, KEYS...)"

    def create(self, options: dict):
        """A new, empty ``kvraft.machines.kv.KvStateMachine``; ``ValueError`` names any
        bad option."""
        from kvraft.machines.kv import KvStateMachine

        return KvStateMachine.from_options(options)


kv = _KvMachinePlugin()
