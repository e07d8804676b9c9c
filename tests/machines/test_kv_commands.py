"""The kv machine's commands: Redis semantics, error replies, revisions, and the rule
that bad input returns an error instead of raising."""

import pytest
from zope.interface.verify import verifyObject

from kvraft.interfaces import IBatchStateMachine, IStateMachine
from kvraft.machines import kv
from kvraft.machines.kv import COMMANDS, INT64_MAX, INT64_MIN, CommandSpec, KvStateMachine
from kvraft.results import OK, CommandError, Status

NOT_INTEGER = CommandError("ERR value is not an integer or out of range")
SYNTAX = CommandError("ERR syntax error")
EXPIRY = CommandError("ERR expiry is not supported")


class Driver:
    """Applies commands at increasing log indexes, as the node does."""

    def __init__(self, **options):
        self.machine = KvStateMachine(**options)
        self.index = 0

    def __call__(self, *command):
        self.index += 1
        return self.machine.apply(self.index, list(command))

    def query(self, *command):
        return self.machine.query(list(command))


@pytest.fixture
def run():
    return Driver()


def test_machine_provides_istatemachine():
    assert verifyObject(IStateMachine, KvStateMachine())
    assert verifyObject(IBatchStateMachine, KvStateMachine())


# -- GET / SET ----------------------------------------------------------------------------

def test_set_then_get(run):
    assert run(b"GET", b"k") is None
    result = run(b"SET", b"k", b"v")
    assert result is OK and type(result) is Status
    assert run(b"GET", b"k") == b"v"
    assert run(b"SET", b"k", b"") is OK
    assert run(b"GET", b"k") == b""  # an empty value is still a value


def test_set_nx_and_xx(run):
    assert run(b"SET", b"k", b"1", b"XX") is None
    assert run(b"GET", b"k") is None
    assert run(b"SET", b"k", b"1", b"NX") is OK
    assert run(b"SET", b"k", b"2", b"nx") is None  # options are case-insensitive
    assert run(b"GET", b"k") == b"1"
    assert run(b"SET", b"k", b"3", b"xx") is OK
    assert run(b"GET", b"k") == b"3"
    assert run(b"SET", b"k", b"4", b"NX", b"XX") == SYNTAX
    assert run(b"GET", b"k") == b"3"


def test_set_get_returns_the_old_value(run):
    assert run(b"SET", b"k", b"1", b"GET") is None
    assert run(b"SET", b"k", b"2", b"GET") == b"1"
    assert run(b"SET", b"k", b"3", b"NX", b"GET") == b"2"  # not set, old value still shown
    assert run(b"GET", b"k") == b"2"
    assert run(b"SET", b"new", b"x", b"XX", b"GET") is None
    assert run(b"EXISTS", b"new") == 0


def test_set_ifeq_is_compare_and_set(run):
    assert run(b"SET", b"k", b"new", b"IFEQ", b"old") is None
    assert run(b"EXISTS", b"k") == 0  # an absent key never equals
    run(b"SET", b"k", b"old")
    assert run(b"SET", b"k", b"new", b"IFEQ", b"other") is None
    assert run(b"SET", b"k", b"new", b"IFEQ", b"ol") is None  # a prefix is not equal
    assert run(b"SET", b"k", b"new", b"IFEQ", b"xold") is None  # nor a longer one
    assert run(b"GET", b"k") == b"old"
    assert run(b"SET", b"k", b"new", b"ifeq", b"old") is OK
    assert run(b"SET", b"k", b"newer", b"IFEQ", b"nope", b"GET") == b"new"
    assert run(b"SET", b"k", b"newer", b"IFEQ", b"new", b"GET") == b"new"
    assert run(b"GET", b"k") == b"newer"


@pytest.mark.parametrize("options", [
    [b"IFEQ", b"a", b"NX"], [b"XX", b"IFEQ", b"a"], [b"IFEQ", b"a", b"IFEQ", b"a"],
    [b"IFEQ"], [b"BOGUS"], [b"GET", b"1"],
])
def test_set_option_errors_write_nothing(run, options):
    run(b"SET", b"k", b"a")
    revision = run.machine.current_revision
    assert run(b"SET", b"k", b"b", *options) == SYNTAX
    assert run(b"GET", b"k") == b"a"
    assert run.machine.current_revision == revision


@pytest.mark.parametrize("options", [
    [b"EX", b"10"], [b"PX", b"10"], [b"EXAT", b"10"], [b"PXAT", b"10"], [b"KEEPTTL"],
    [b"ex", b"10"], [b"NX", b"EX"],
])
def test_expiry_is_refused(run, options):
    assert run(b"SET", b"k", b"v", *options) == EXPIRY
    assert run(b"EXISTS", b"k") == 0


def test_setnx_and_getset(run):
    assert run(b"SETNX", b"k", b"1") == 1
    assert run(b"SETNX", b"k", b"2") == 0
    assert run(b"GET", b"k") == b"1"
    assert run(b"GETSET", b"k", b"3") == b"1"
    assert run(b"GETSET", b"other", b"x") is None
    assert run(b"MGET", b"k", b"other") == [b"3", b"x"]


# -- DEL / EXISTS / MSET / MGET / STRLEN / APPEND ------------------------------------------

def test_del_and_exists_count_keys(run):
    run(b"MSET", b"a", b"1", b"b", b"2", b"c", b"3")
    assert run(b"EXISTS", b"a", b"a", b"b", b"zz") == 3  # repeats count again, as in Redis
    assert run(b"DEL", b"a", b"a", b"zz") == 1
    assert run(b"DEL", b"b", b"c") == 2
    assert run(b"DBSIZE") == 0


def test_mset_is_all_or_nothing_and_mget_keeps_order(run):
    assert run(b"MSET", b"a", b"1", b"b") == CommandError(
        "ERR wrong number of arguments for 'mset' command")
    assert run(b"DBSIZE") == 0
    assert run(b"MSET", b"a", b"1", b"b", b"2", b"a", b"3") is OK  # last one wins
    assert run(b"MGET", b"b", b"missing", b"a") == [b"2", None, b"3"]


def test_append_and_strlen(run):
    assert run(b"STRLEN", b"k") == 0
    assert run(b"APPEND", b"k", b"") == 0
    assert run(b"EXISTS", b"k") == 1  # APPEND creates the key, as in Redis
    assert run(b"APPEND", b"k", b"hello") == 5
    assert run(b"APPEND", b"k", b" world") == 11
    assert run(b"GET", b"k") == b"hello world"
    assert run(b"STRLEN", b"k") == 11


def test_append_refuses_values_over_the_limit(run, monkeypatch):
    monkeypatch.setattr(kv, "VALUE_BYTES_MAX", 8)
    assert run(b"APPEND", b"k", b"12345") == 5
    assert run(b"APPEND", b"k", b"6789") == CommandError(
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    assert run(b"GET", b"k") == b"12345"


# -- INCR family -----------------------------------------------------------------------------

def test_incr_family(run):
    assert run(b"INCR", b"n") == 1
    assert run(b"INCRBY", b"n", b"41") == 42
    assert run(b"DECR", b"n") == 41
    assert run(b"DECRBY", b"n", b"50") == -9
    assert run(b"INCRBY", b"n", b"-1") == -10
    assert run(b"GET", b"n") == b"-10"  # stored as decimal text, like Redis
    assert run(b"DECR", b"fresh") == -1


@pytest.mark.parametrize("stored", [
    b"abc", b"", b" 1", b"1 ", b"+1", b"01", b"-0", b"1.5", b"1e3", b"0x10", b"\xff",
    b"9223372036854775808", b"-9223372036854775809", b"1" * 21, b"1_000",
])
def test_incr_rejects_values_that_are_not_int64(run, stored):
    run(b"SET", b"n", stored)
    assert run(b"INCR", b"n") == NOT_INTEGER
    assert run(b"GET", b"n") == stored
    assert run(b"INCRBY", b"other", stored) == NOT_INTEGER
    assert run(b"EXISTS", b"other") == 0


def test_incr_accepts_the_int64_extremes(run):
    run(b"SET", b"n", b"9223372036854775806")
    assert run(b"INCR", b"n") == INT64_MAX
    assert run(b"INCRBY", b"m", b"-9223372036854775808") == INT64_MIN
    assert run(b"SET", b"z", b"0") is OK and run(b"INCR", b"z") == 1


def test_incr_overflow_is_an_error_and_changes_nothing(run):
    run(b"SET", b"n", b"%d" % INT64_MAX)
    overflow = CommandError("ERR increment or decrement would overflow")
    assert run(b"INCR", b"n") == overflow
    assert run(b"INCRBY", b"n", b"9223372036854775807") == overflow
    assert run(b"GET", b"n") == b"%d" % INT64_MAX
    run(b"SET", b"m", b"%d" % INT64_MIN)
    assert run(b"DECR", b"m") == overflow
    assert run(b"DECRBY", b"x", b"-9223372036854775808") == CommandError(
        "ERR decrement would overflow")


# -- KEYS / DBSIZE / FLUSHALL ----------------------------------------------------------------

def test_keys_matches_redis_globs(run):
    run(b"MSET", b"user:1", b"a", b"user:2", b"b", b"user:10", b"c", b"order:1", b"d",
        b"", b"empty", b"a*b", b"star")
    assert sorted(run(b"KEYS", b"user:?")) == [b"user:1", b"user:2"]
    assert sorted(run(b"KEYS", b"user:*")) == [b"user:1", b"user:10", b"user:2"]
    assert sorted(run(b"KEYS", b"*:1*")) == [b"order:1", b"user:1", b"user:10"]
    assert run(b"KEYS", b"user:[^12]*") == []
    assert run(b"KEYS", b"a\\*b") == [b"a*b"]  # escaped: a literal lookup
    assert run(b"KEYS", b"nope") == []
    assert b"" in run(b"KEYS", b"*")  # Redis lists the empty key for exactly "*"
    assert b"" not in run(b"KEYS", b"**")
    assert len(run(b"KEYS", b"*")) == run(b"DBSIZE") == 6


def test_keys_limits_pattern_length_and_reply_size():
    run = Driver(keys_reply_max=2, keys_pattern_bytes_max=8)
    run(b"MSET", b"a1", b"x", b"a2", b"x", b"a3", b"x")
    too_many = run(b"KEYS", b"a*")
    assert isinstance(too_many, CommandError)
    assert "more than 2 keys" in too_many.message and "keys_reply_max" in too_many.message
    assert sorted(run(b"KEYS", b"a[12]")) == [b"a1", b"a2"]
    too_long = run(b"KEYS", b"a" * 9)
    assert isinstance(too_long, CommandError) and "9 bytes" in too_long.message


def test_flushall(run):
    run(b"MSET", b"a", b"1", b"b", b"2")
    assert run(b"FLUSHALL", b"BOGUS") == SYNTAX
    assert run(b"FLUSHALL", b"ASYNC", b"SYNC") == SYNTAX
    assert run(b"DBSIZE") == 2
    assert run(b"FLUSHALL", b"async") is OK
    assert run(b"DBSIZE") == 0 and run(b"KEYS", b"*") == []
    assert run(b"FLUSHALL") is OK


# -- dispatch, arity, query ------------------------------------------------------------------

@pytest.mark.parametrize("command, name", [
    ([b"GET"], "get"), ([b"GET", b"a", b"b"], "get"), ([b"SET", b"k"], "set"),
    ([b"MGET"], "mget"), ([b"DBSIZE", b"x"], "dbsize"), ([b"INCRBY", b"k"], "incrby"),
    ([b"DEL"], "del"), ([b"KEYS"], "keys"), ([b"APPEND", b"k"], "append"),
])
def test_wrong_arity_is_a_redis_style_error(run, command, name):
    assert run(*command) == CommandError(f"ERR wrong number of arguments for '{name}' command")


def test_unknown_command_echoes_name_and_arguments(run):
    assert run(b"FOO", b"a", b"b") == CommandError(
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b' ")
    error = run(b"EVAL\r\n", b"x" * 500, b"\x00y")
    assert error.message.startswith("ERR unknown command 'EVAL??', with args beginning with:")
    assert len(error.message) < 400 and "\x00" not in error.message


def test_command_names_are_accepted_in_any_case(run):
    assert run(b"set", b"k", b"v") is OK
    assert run(b"Get", b"k") == b"v"


def test_query_answers_reads_and_refuses_writes(run):
    run(b"SET", b"k", b"v")
    before = (run.machine.last_applied, run.machine.current_revision)
    assert run.query(b"GET", b"k") == b"v"
    assert run.query(b"MGET", b"k", b"x") == [b"v", None]
    assert run.query(b"EXISTS", b"k") == 1
    assert run.query(b"STRLEN", b"k") == 1
    assert run.query(b"DBSIZE") == 1
    assert run.query(b"KEYS", b"*") == [b"k"]
    for write in ([b"SET", b"k", b"w"], [b"DEL", b"k"], [b"INCR", b"n"], [b"FLUSHALL"]):
        error = run.machine.query(write)
        assert isinstance(error, CommandError) and "write command" in error.message
    assert run.query(b"GET", b"k") == b"v" and run.query(b"EXISTS", b"n") == 0
    assert (run.machine.last_applied, run.machine.current_revision) == before


def test_reads_are_flagged_exactly_as_the_contract_says():
    reads = {name for name, spec in COMMANDS.items() if not spec.write}
    assert reads == {b"GET", b"MGET", b"EXISTS", b"STRLEN", b"DBSIZE", b"KEYS"}
    assert set(COMMANDS) - reads == {
        b"SET", b"SETNX", b"GETSET", b"DEL", b"INCR", b"INCRBY", b"DECR", b"DECRBY",
        b"APPEND", b"MSET", b"FLUSHALL"}


# -- last_applied and revisions ---------------------------------------------------------------

def test_apply_tracks_last_applied_and_refuses_going_back():
    machine = KvStateMachine()
    machine.apply(5, [b"SET", b"a", b"1"])
    machine.apply(5, [b"SET", b"b", b"1"])  # commands of one entry share its index
    assert machine.last_applied == 5
    with pytest.raises(ValueError, match="log order"):
        machine.apply(4, [b"GET", b"a"])
    machine.set_last_applied(9)
    assert machine.last_applied == 9


def test_revisions_advance_once_per_command_that_changes_keys(run):
    machine = run.machine
    assert machine.current_revision == 0 and machine.revision(b"a") == 0
    run(b"SET", b"a", b"1")
    assert machine.current_revision == 1 and machine.revision(b"a") == 1
    run(b"MSET", b"b", b"1", b"c", b"1")
    assert machine.current_revision == 2
    assert machine.revision(b"b") == machine.revision(b"c") == 2
    assert machine.revision(b"a") == 1
    for no_op in ([b"SET", b"a", b"9", b"NX"], [b"SET", b"z", b"9", b"XX"],
                  [b"SETNX", b"a", b"9"], [b"DEL", b"missing"], [b"GET", b"a"],
                  [b"INCR", b"a", b"x"], [b"SET", b"a", b"1", b"EX", b"1"],
                  [b"SET", b"a", b"2", b"IFEQ", b"0"]):
        run(*no_op)
    assert machine.current_revision == 2
    run(b"SET", b"a", b"1")  # rewriting an equal value is still a write
    assert machine.current_revision == 3 and machine.revision(b"a") == 3
    run(b"INCR", b"a")
    run(b"APPEND", b"b", b"x")
    assert machine.revision(b"a") == 4 and machine.revision(b"b") == 5
    run(b"DEL", b"a", b"missing")
    assert machine.current_revision == 6 and machine.revision(b"a") == 0
    run(b"FLUSHALL")
    assert machine.current_revision == 7 and machine.revision(b"b") == 0
    run(b"FLUSHALL")  # nothing left to remove
    assert machine.current_revision == 7
    run(b"SET", b"a", b"1")
    assert machine.revision(b"a") == 8


# -- garbage in, error out ---------------------------------------------------------------------

GARBAGE = [
    None, 42, b"GET", "GET k", {b"GET": b"k"}, [], (), [b""], [b"GET", "k"], ["GET", b"k"],
    [b"GET", 1], [b"SET", b"k", None], [b"SET", b"k", [b"v"]], [b"INCRBY", b"k", 2**100],
    [b"INCRBY", b"k", b"9" * 1000], [b"SET", b"k", bytearray(b"v")], [[b"GET"], b"k"],
    [b"MSET", b"k"], [b"\x00\xff"], [b"KEYS", b"[" * 100 + b"\\"], [b"SET", b"k", b"v", b""],
    (b"SET", b"k", b"v", b"IFEQ"), [b"DEL", b"k"] * 10, [b"EXISTS"] + [b"k"] * 10_000,
]


@pytest.mark.parametrize("command", GARBAGE, ids=[repr(c)[:40] for c in GARBAGE])
def test_garbage_gets_an_error_or_a_harmless_reply_never_an_exception(command):
    machine = KvStateMachine()
    machine.apply(1, [b"SET", b"k", b"v"])
    result = machine.apply(2, command)
    assert machine.last_applied == 2
    query_result = machine.query(command)
    if not isinstance(command, list | tuple) or not command or not all(
            type(arg) is bytes for arg in command):
        assert isinstance(result, CommandError) and isinstance(query_result, CommandError)
        assert result.message.startswith("ERR malformed command")


def test_a_handler_bug_replies_internal_error_instead_of_halting(run, monkeypatch):
    def broken(machine, args):
        raise KeyError("boom")

    monkeypatch.setitem(COMMANDS, b"GET", CommandSpec(b"GET", 2, False, broken))
    assert run(b"GET", b"k") == kv.ERR_INTERNAL
    assert run.machine.last_applied == 1


def test_memory_errors_still_propagate(run, monkeypatch):
    """Running out of memory is local to one node: replying would diverge the nodes."""
    def starving(machine, args):
        raise MemoryError()

    monkeypatch.setitem(COMMANDS, b"GET", CommandSpec(b"GET", 2, False, starving))
    with pytest.raises(MemoryError):
        run(b"GET", b"k")
