"""Properties of the kv machine over random command sequences (Hypothesis):

* restoring a snapshot taken after k commands and applying the rest ends in the same
  state, byte for byte, as applying everything from the start;
* determinism: a machine that takes (and holds, and drops) snapshot views along the way
  gives the same results and the same snapshot bytes as one that never does, and every
  view keeps showing the state of its moment;
* no command, however malformed, makes ``apply`` or ``query`` raise;
* ``apply_batch`` (one call per log entry) gives the results and the state of ``apply``
  per command, with and without snapshot views held across batches.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.machines.kv import INT64_MAX, KvStateMachine
from kvraft.results import OK, CommandError

_KEYS = st.sampled_from([b"a", b"b", b"c", b"n", b"", b"a*"])
_VALUES = st.one_of(
    st.sampled_from([b"0", b"1", b"-5", b"%d" % INT64_MAX, b"x", b""]),
    st.binary(max_size=6),
)
_INTEGERS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda n: b"%d" % n),
    st.sampled_from([b"1", b"-1", b"abc", b"01"]),
)


def _command(name, *parts):
    return st.tuples(*parts).map(lambda args: [name, *args])


_WRITES = st.one_of(
    _command(b"SET", _KEYS, _VALUES),
    _command(b"set", _KEYS, _VALUES),
    _command(b"SeT", _KEYS, _VALUES),
    st.tuples(_KEYS, _VALUES).map(lambda kv: (b"SET", *kv)),  # a tuple, not a list
    _command(b"SET", _KEYS, st.sampled_from([7, None, "text"])),
    _command(b"SET", _KEYS, _VALUES, st.sampled_from([b"NX", b"XX", b"GET", b"EX"])),
    _command(b"SET", _KEYS, _VALUES, st.just(b"IFEQ"), _VALUES),
    _command(b"SETNX", _KEYS, _VALUES),
    _command(b"GETSET", _KEYS, _VALUES),
    _command(b"DEL", _KEYS, _KEYS),
    _command(b"INCR", _KEYS),
    _command(b"DECRBY", _KEYS, _INTEGERS),
    _command(b"INCRBY", _KEYS, _INTEGERS),
    _command(b"APPEND", _KEYS, _VALUES),
    _command(b"MSET", _KEYS, _VALUES, _KEYS, _VALUES),
)
_READS = st.one_of(
    _command(b"GET", _KEYS),
    _command(b"MGET", _KEYS, _KEYS),
    _command(b"EXISTS", _KEYS, _KEYS),
    _command(b"STRLEN", _KEYS),
    _command(b"KEYS", st.sampled_from([b"*", b"a*", b"?", b"[ab]", b"a\\*", b"[^"])),
    st.just([b"DBSIZE"]),
)
_GARBAGE = st.one_of(
    st.lists(st.binary(max_size=4), max_size=4),  # unknown names, wrong arity, empty
    st.lists(st.one_of(st.binary(max_size=3), st.integers(), st.text(max_size=3),
                       st.none()), max_size=4),
    st.sampled_from([None, b"SET", "GET", 7, {}]),
    st.sampled_from([[[b"SET"], b"k", b"v"], [[b"GET"], b"k"], [{}, b"k"], [b"SET", [b"k"], b"v"],
                     [b"SET", b"k", [b"v"]]]),  # unhashable or nested parts
)
_COMMANDS = st.lists(
    st.one_of(_WRITES, _WRITES, _WRITES, _READS, _GARBAGE, st.just([b"FLUSHALL"])),
    max_size=60,
)


def _body(machine):
    return b"".join(machine.snapshot().chunks())


def _apply_all(machine, commands, first_index=1):
    return [machine.apply(first_index + i, command) for i, command in enumerate(commands)]


@settings(max_examples=150, deadline=None)
@given(commands=_COMMANDS, data=st.data())
def test_snapshot_plus_suffix_equals_applying_everything(commands, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(commands)), label="cut")
    reference = KvStateMachine()
    expected_results = _apply_all(reference, commands)

    prefix = KvStateMachine(snapshot_chunk_bytes=data.draw(st.integers(1, 64), label="chunk"))
    _apply_all(prefix, commands[:cut])
    restored = KvStateMachine()
    restored.restore(prefix.snapshot().chunks())
    restored.set_last_applied(cut)
    results = _apply_all(restored, commands[cut:], first_index=cut + 1)

    assert results == expected_results[cut:]
    assert _body(restored) == _body(reference)
    assert restored.current_revision == reference.current_revision


@settings(max_examples=150, deadline=None)
@given(commands=_COMMANDS, data=st.data())
def test_views_change_nothing_and_stay_frozen(commands, data):
    plain, viewed = KvStateMachine(), KvStateMachine()
    held = []  # (view, its bytes when taken)
    for index, command in enumerate(commands, start=1):
        assert viewed.apply(index, command) == plain.apply(index, command)
        action = data.draw(st.sampled_from(["none", "none", "take", "drop"]), label="action")
        if action == "take":
            view = viewed.snapshot()
            held.append((view, b"".join(view.chunks())))
            del view
        elif action == "drop" and held:
            held.pop(data.draw(st.integers(0, len(held) - 1), label="which"))
        assert viewed.query([b"KEYS", b"*"]) == plain.query([b"KEYS", b"*"])
    assert all(b"".join(view.chunks()) == taken for view, taken in held)
    assert _body(viewed) == _body(plain)


@settings(max_examples=150, deadline=None)
@given(command=st.one_of(_GARBAGE, _WRITES, _READS))
def test_nothing_raises(command):
    machine = KvStateMachine()
    machine.apply(1, [b"MSET", b"a", b"1", b"n", b"5"])
    result = machine.apply(2, command)
    assert result is None or isinstance(result, bytes | int | list | str | CommandError)
    machine.query(command)


@settings(max_examples=150, deadline=None)
@given(commands=_COMMANDS, data=st.data())
def test_apply_batch_is_apply_per_command(commands, data):
    one_by_one, batched = KvStateMachine(), KvStateMachine()
    held = []
    start, index = 0, 0
    while start < len(commands):
        size = data.draw(st.integers(1, 8), label="batch")
        batch = commands[start:start + size]
        start += size
        index += 1
        expected = [one_by_one.apply(index, command) for command in batch]
        assert batched.apply_batch(index, batch) == expected
        assert batched.last_applied == one_by_one.last_applied == index
        if data.draw(st.booleans(), label="take a view"):
            held.append(batched.snapshot())
        elif held and data.draw(st.booleans(), label="drop a view"):
            held.pop()
    assert _body(batched) == _body(one_by_one)
    assert batched.current_revision == one_by_one.current_revision


def test_apply_batch_refuses_an_older_index():
    machine = KvStateMachine()
    assert machine.apply_batch(5, [[b"SET", b"k", b"v"], [b"GET", b"k"]]) == [OK, b"v"]
    with pytest.raises(ValueError, match="log order"):
        machine.apply_batch(4, [[b"SET", b"k", b"w"]])
    assert machine.query([b"GET", b"k"]) == b"v"


_GETS = st.one_of(
    _command(b"GET", _KEYS), _command(b"get", _KEYS), _command(b"gEt", _KEYS),
    st.tuples(st.just(b"GET"), _KEYS),  # a tuple, not a list
    _command(b"GET", st.sampled_from([7, None, "a"])),
    _command(b"GET", _KEYS, _KEYS),  # wrong arity
    st.sampled_from([[[b"GET"], b"k"], [b"GET", [b"k"]], [{}, b"k"]]),
)


@settings(max_examples=150, deadline=None)
@given(commands=_COMMANDS, reads=st.lists(_GETS, max_size=10))
def test_query_answers_get_like_the_command_table(commands, reads):
    from kvraft.machines import kv
    machine = KvStateMachine()
    _apply_all(machine, commands)
    for command in reads:
        spec = kv._resolve(command)
        expected = spec if isinstance(spec, CommandError) else machine._run(spec, command)
        assert machine.query(command) == expected
