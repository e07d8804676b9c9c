"""The ``kv`` plugin is discoverable through Twisted's plugin system and provides the
state-machine interfaces."""

import pytest
from twisted.plugin import IPlugin, getPlugins
from zope.interface.verify import verifyObject

from kvraft.interfaces import ISnapshotView, IStateMachine, IStateMachinePlugin
from kvraft.machines.kv import KvStateMachine


def _kv_plugin():
    found = [p for p in getPlugins(IStateMachinePlugin) if p.name == "kv"]
    assert len(found) == 1, f"expected exactly one 'kv' plugin, found {found}"
    return found[0]


def test_plugin_is_found_and_provides_its_interfaces():
    plugin = _kv_plugin()
    assert verifyObject(IPlugin, plugin)
    assert verifyObject(IStateMachinePlugin, plugin)
    assert plugin.description


def test_plugin_creates_an_empty_machine():
    machine = _kv_plugin().create({})
    assert isinstance(machine, KvStateMachine)
    assert verifyObject(IStateMachine, machine)
    assert machine.last_applied == 0 and machine.key_count == 0


def test_plugin_passes_options_through():
    machine = _kv_plugin().create({"keys_reply_max": 1})
    machine.apply(1, [b"MSET", b"a", b"1", b"b", b"2"])
    assert machine.query([b"KEYS", b"a"]) == [b"a"]
    assert machine.query([b"KEYS", b"*"]).message.startswith("ERR KEYS matched more than 1")


@pytest.mark.parametrize("options, fragment", [
    ({"snapshot_chunk_byte": 10}, "unknown option(s) snapshot_chunk_byte"),
    ({"keys_reply_max": 0}, "keys_reply_max must be a positive integer"),
    ({"keys_reply_max": "10"}, "keys_reply_max must be a positive integer"),
    ({"snapshot_chunk_bytes": True}, "snapshot_chunk_bytes must be a positive integer"),
])
def test_plugin_rejects_bad_options_with_a_clear_message(options, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        _kv_plugin().create(options)


def test_snapshot_view_provides_isnapshotview():
    assert verifyObject(ISnapshotView, KvStateMachine().snapshot())
