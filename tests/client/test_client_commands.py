"""kvraft.client.commands: arity, validation and normalization of every command; and the
connection commands answered by kvraft.client.local."""

from __future__ import annotations

import pytest
from client_support import RAFT_INFO, FakeBackend, connect, exchange, make_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.client.commands import (
    COMMANDS,
    CommandFlag,
    Route,
    parse_int64,
    resolve,
    resolve_many,
)
from kvraft.client.errors import InvalidCommandError


def normalized(line: bytes) -> list[bytes]:
    return resolve(line.split())[1]


def rejected(line: bytes) -> str:
    with pytest.raises(InvalidCommandError) as caught:
        resolve(line.split())
    return str(caught.value)


# -- normalization ---------------------------------------------------------------------


@pytest.mark.parametrize(("line", "command"), [
    (b"get k", [b"GET", b"k"]),
    (b"SET k v", [b"SET", b"k", b"v"]),
    (b"set k v nx", [b"SET", b"k", b"v", b"NX"]),
    (b"set k v xx get", [b"SET", b"k", b"v", b"XX", b"GET"]),
    (b"set k v get nx", [b"SET", b"k", b"v", b"NX", b"GET"]),
    (b"set k v nx nx", [b"SET", b"k", b"v", b"NX"]),
    (b"set k v ifeq old", [b"SET", b"k", b"v", b"IFEQ", b"old"]),
    (b"set k v get ifeq old", [b"SET", b"k", b"v", b"GET", b"IFEQ", b"old"]),
    (b"setnx k v", [b"SETNX", b"k", b"v"]),
    (b"getset k v", [b"SET", b"k", b"v", b"GET"]),
    (b"del a b", [b"DEL", b"a", b"b"]),
    (b"exists a a", [b"EXISTS", b"a", b"a"]),
    (b"incr k", [b"INCRBY", b"k", b"1"]),
    (b"decr k", [b"INCRBY", b"k", b"-1"]),
    (b"incrby k -5", [b"INCRBY", b"k", b"-5"]),
    (b"decrby k 5", [b"INCRBY", b"k", b"-5"]),
    (b"decrby k -9223372036854775807", [b"INCRBY", b"k", b"9223372036854775807"]),
    (b"append k v", [b"APPEND", b"k", b"v"]),
    (b"strlen k", [b"STRLEN", b"k"]),
    (b"mget a b c", [b"MGET", b"a", b"b", b"c"]),
    (b"mset a 1 b 2", [b"MSET", b"a", b"1", b"b", b"2"]),
    (b"keys user:*", [b"KEYS", b"user:*"]),
    (b"dbsize", [b"DBSIZE"]),
    (b"flushall", [b"FLUSHALL"]),
    (b"flushall async", [b"FLUSHALL"]),
    (b"select 0", [b"SELECT", b"0"]),
    (b"ping", [b"PING"]),
    (b"raft.members", [b"RAFT.MEMBERS"]),
    (b"raft.add n4 10.0.0.4:7000", [b"RAFT.ADD", b"n4", b"10.0.0.4:7000"]),
    (b"raft.promote n4", [b"RAFT.PROMOTE", b"n4"]),
    (b"raft.remove n4", [b"RAFT.REMOVE", b"n4"]),
    (b"raft.transfer", [b"RAFT.TRANSFER"]),
    (b"raft.transfer n2", [b"RAFT.TRANSFER", b"n2"]),
    (b"raft.snapshot", [b"RAFT.SNAPSHOT"]),
])
def test_commands_are_normalized_for_the_state_machine(line, command):
    assert normalized(line) == command


@pytest.mark.parametrize(("line", "error"), [
    (b"get", "ERR wrong number of arguments for 'get' command"),
    (b"get a b", "ERR wrong number of arguments for 'get' command"),
    (b"set k", "ERR wrong number of arguments for 'set' command"),
    (b"mset a 1 b", "ERR wrong number of arguments for 'mset' command"),
    (b"mget", "ERR wrong number of arguments for 'mget' command"),
    (b"del", "ERR wrong number of arguments for 'del' command"),
    (b"ping a b", "ERR wrong number of arguments for 'ping' command"),
    (b"echo", "ERR wrong number of arguments for 'echo' command"),
    (b"dbsize x", "ERR wrong number of arguments for 'dbsize' command"),
    (b"raft.promote", "ERR wrong number of arguments for 'raft.promote' command"),
    (b"raft.transfer a b", "ERR wrong number of arguments for 'raft.transfer' command"),
    (b"set k v nx xx", "ERR syntax error"),
    (b"set k v xx nx", "ERR syntax error"),
    (b"set k v nx ifeq old", "ERR syntax error"),
    (b"set k v ifeq old xx", "ERR syntax error"),
    (b"set k v ifeq", "ERR syntax error"),
    (b"set k v bogus", "ERR syntax error"),
    (b"set k v ex", "ERR syntax error"),
    (b"flushall now", "ERR syntax error"),
    (b"incrby k 1.5", "ERR value is not an integer or out of range"),
    (b"incrby k 9223372036854775808", "ERR value is not an integer or out of range"),
    (b"decrby k x", "ERR value is not an integer or out of range"),
    (b"decrby k -9223372036854775808", "ERR decrement would overflow"),
    (b"select 1", "ERR DB index is out of range"),
    (b"select x", "ERR value is not an integer or out of range"),
    (b"nosuch a b", "ERR unknown command 'nosuch', with args beginning with: 'a' 'b' "),
    (b"nosuch", "ERR unknown command 'nosuch', with args beginning with: "),
])
def test_bad_commands_get_redis_error_texts(line, error):
    assert rejected(line) == error


@pytest.mark.parametrize("options", [b"ex 10", b"PX 10", b"exat 10", b"pxat 10", b"keepttl",
                                     b"nx ex 10"])
def test_expiry_options_are_refused_with_an_explanation(options):
    assert rejected(b"set k v " + options).startswith("ERR expiry is not supported")


def test_unknown_command_error_shows_at_most_128_characters_of_arguments():
    error = rejected(b"nosuch " + b" ".join([b"x" * 50] * 5))
    shown = error.split("with args beginning with: ", 1)[1]
    assert shown == "'" + "x" * 50 + "' '" + "x" * 50 + "' '" + "x" * 22 + "' "


_words = st.sampled_from([b"SET", b"set", b"GET", b"Get", b"INCRBY", b"NX", b"XX", b"GET",
                          b"EX", b"10", b"k", b"v", b"", b"PING", b"IFEQ", b"NOPE"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_words, min_size=1, max_size=5).flatmap(
    lambda first: st.lists(st.lists(_words, min_size=len(first) - 1,
                                    max_size=len(first) - 1).map(lambda rest: [first[0], *rest]),
                           min_size=1, max_size=4).map(lambda more: [first, *more])))
def test_resolve_many_is_resolve_of_each_or_declines(commands):
    # Pipelines of one command name and argument count, with arguments that are valid
    # or not for it (SET k v NX, SET k v EX 10, SET k v GET...).
    try:
        expected = [resolve(args) for args in commands]
    except InvalidCommandError:
        expected = None
    got = resolve_many(commands)
    if expected is None:
        assert got is None  # an error: resolved one by one for its reply
    elif got is not None:
        spec, normalized = got
        assert [spec] * len(commands) == [e[0] for e in expected]
        assert normalized == [e[1] for e in expected]


def test_resolve_many_takes_a_pipeline_of_plain_sets_and_declines_mixed_ones():
    sets = [[b"set", b"k%d" % i, b"v"] for i in range(3)]
    spec, normalized = resolve_many(sets)
    assert spec.name == "set" and normalized == [[b"SET", b"k%d" % i, b"v"] for i in range(3)]
    assert resolve_many([[b"SET", b"k", b"v"], [b"GET", b"k"]]) is None
    assert resolve_many([[b"SET", b"k", b"v"], [b"SET", b"k", b"v", b"NX"]]) is None
    assert resolve_many([[b"SET", b"k", b"v", b"NX"], [b"SET", b"k", b"v", b"EX"]]) is None


@pytest.mark.parametrize(("text", "value"), [
    (b"0", 0), (b"-1", -1), (b"9223372036854775807", (1 << 63) - 1),
    (b"-9223372036854775808", -(1 << 63)), (b"01", None), (b"+1", None), (b"-0", None),
    (b" 1", None), (b"1_000", None), (b"", None), (b"9223372036854775808", None),
])
def test_parse_int64_accepts_exactly_redis_integers(text, value):
    assert parse_int64(text) == value


def test_every_command_has_a_route_matching_its_flags():
    for name, spec in COMMANDS.items():
        assert name == spec.name.upper().encode()
        if spec.route is Route.LOCAL:
            assert CommandFlag.LOCAL in spec.flags, name
        elif spec.route is Route.READ:
            assert spec.flags & CommandFlag.READ, name
        elif spec.route is Route.WRITE:
            assert spec.flags & CommandFlag.WRITE, name
        else:
            assert CommandFlag.ADMIN in spec.flags, name
    assert COMMANDS[b"FLUSHALL"].route is Route.ADMIN
    assert all(COMMANDS[n].route is Route.ADMIN for n in COMMANDS if n.startswith(b"RAFT."))


# -- connection commands ---------------------------------------------------------------


def test_ping_and_echo():
    factory = make_factory()
    assert exchange(factory, b"PING\r\nPING hello\r\nECHO 'a b'\r\n") == (
        b"+PONG\r\n$5\r\nhello\r\n$3\r\na b\r\n")


def test_select_only_zero():
    assert exchange(make_factory(), b"SELECT 0\r\nSELECT 3\r\n") == (
        b"+OK\r\n-ERR DB index is out of range\r\n")


def test_hello_2_answers_redis_6_shape_and_refuses_other_protocols():
    factory = make_factory()
    protocol, transport = connect(factory)
    protocol.dataReceived(b"HELLO 2 SETNAME app\r\n")
    assert transport.value() == (
        b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n"
        b"$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:%d\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
        b"$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n" % protocol.client_id)
    assert protocol.name == b"app"
    for version in (b"1", b"4"):
        assert exchange(factory, b"HELLO " + version + b"\r\n") == (
            b"-NOPROTO sorry, this protocol version is not supported\r\n")
    assert exchange(factory, b"HELLO x\r\n") == (
        b"-ERR Protocol version is not an integer or out of range\r\n")
    assert exchange(factory, b"HELLO 2 BOGUS\r\n") == (
        b"-ERR Syntax error in HELLO option 'BOGUS'\r\n")
    assert exchange(factory, b"HELLO 2 AUTH user pass\r\n").startswith(
        b"-ERR AUTH is not supported")
    assert exchange(factory, b"HELLO\r\n").startswith(b"*14\r\n")


def test_hello_3_switches_the_connection_to_resp3_replies():
    backend = FakeBackend(manual=True)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(b"GET before\r\nHELLO 3\r\nGET after\r\nMGET a b\r\n"
                          b"CONFIG GET nosuch\r\nCLIENT GETNAME\r\nCOMMAND INFO nosuch\r\n")
    for call in backend.calls[:2]:
        call.answer(None)
    backend.calls[2].answer([b"1", None])
    assert transport.value() == (
        b"$-1\r\n"  # asked before HELLO 3: still a RESP2 reply
        b"%%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n"
        b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:%d\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
        b"$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
        b"_\r\n*2\r\n$1\r\n1\r\n_\r\n%%0\r\n_\r\n*1\r\n_\r\n" % protocol.client_id)
    assert protocol.protocol_version == 3
    transport.clear()
    protocol.dataReceived(b"HELLO 2\r\nGET x\r\n")
    backend.calls[3].answer(None)
    assert transport.value().endswith(b":2\r\n$2\r\nid\r\n:%d\r\n$4\r\nmode\r\n$10\r\n"
                                      b"standalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
                                      b"$7\r\nmodules\r\n*0\r\n$-1\r\n" % protocol.client_id)


def test_client_subcommands():
    factory = make_factory()
    protocol, transport = connect(factory)
    protocol.dataReceived(
        b"CLIENT ID\r\nCLIENT GETNAME\r\nCLIENT SETNAME worker-1\r\nCLIENT GETNAME\r\n"
        b"CLIENT SETINFO LIB-NAME redis-py\r\nCLIENT SETINFO lib-ver 5.0\r\n"
        b"CLIENT SETINFO color red\r\nCLIENT SETNAME 'a b'\r\nCLIENT SETNAME\r\n"
        b"CLIENT KILL x\r\n")
    assert transport.value() == (
        b":%d\r\n$-1\r\n+OK\r\n$8\r\nworker-1\r\n+OK\r\n+OK\r\n"
        b"-ERR Unrecognized option 'color'\r\n"
        b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        b"-ERR wrong number of arguments for 'client|setname' command\r\n"
        b"-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n" % protocol.client_id)
    assert (protocol.lib_name, protocol.lib_ver) == (b"redis-py", b"5.0")


def test_client_list_and_info_describe_connections():
    factory = make_factory()
    first, _ = connect(factory)
    first.dataReceived(b"CLIENT SETNAME first\r\nREADONLY\r\n")
    second, transport = connect(factory)
    second.identity = "app-7"
    second.dataReceived(b"CLIENT LIST\r\n")
    listing = transport.value().split(b"\r\n", 1)[1].decode()
    lines = listing.rstrip("\r\n").split("\n")
    assert len(lines) == 2
    assert f"id={first.client_id} " in lines[0] and " name=first " in lines[0]
    assert " flags=r " in lines[0] and " cmd=readonly " in lines[0]
    assert " laddr=127.0.0.1:6379 " in lines[0]
    assert f"id={second.client_id} " in lines[1] and " user=app-7 " in lines[1]
    transport.clear()
    second.dataReceived(b"CLIENT INFO\r\n")
    assert f"id={second.client_id} ".encode() in transport.value()


def test_command_count_info_docs_and_list():
    factory = make_factory()
    count = len(COMMANDS)
    assert exchange(factory, b"COMMAND COUNT\r\n") == b":%d\r\n" % count
    assert exchange(factory, b"COMMAND DOCS\r\n") == b"*0\r\n"
    assert exchange(factory, b"COMMAND INFO get mset nosuch\r\n") == (
        b"*3\r\n"
        b"*10\r\n$3\r\nget\r\n:2\r\n*1\r\n+readonly\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n"
        b"*10\r\n$4\r\nmset\r\n:-3\r\n*1\r\n+write\r\n:1\r\n:-1\r\n:2\r\n*0\r\n*0\r\n*0\r\n*0\r\n"
        b"$-1\r\n")
    everything = exchange(factory, b"COMMAND\r\n")
    assert everything.startswith(b"*%d\r\n*10\r\n" % count)
    assert everything.count(b"*10\r\n") == count
    assert exchange(factory, b"COMMAND LIST\r\n").startswith(b"*%d\r\n$4\r\nping\r\n" % count)
    assert exchange(factory, b"COMMAND NOPE\r\n") == (
        b"-ERR unknown subcommand 'NOPE'. Try COMMAND HELP.\r\n")


def test_config_get_answers_the_few_redis_parameters_and_config_set_is_refused():
    factory = make_factory(connections_max=50)
    assert exchange(factory, b"CONFIG GET save\r\nCONFIG GET APPENDONLY\r\n") == (
        b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n")
    assert exchange(factory, b"CONFIG GET max* nosuch\r\n") == (
        b"*2\r\n$10\r\nmaxclients\r\n$2\r\n50\r\n")
    assert exchange(factory, b"CONFIG GET nosuch\r\n") == b"*0\r\n"
    assert exchange(factory, b"CONFIG SET save x\r\n").startswith(
        b"-ERR CONFIG SET is not supported")
    assert exchange(factory, b"CONFIG GET\r\n") == (
        b"-ERR wrong number of arguments for 'config|get' command\r\n")


def _info_fields(reply: bytes) -> dict[str, str]:
    header, body = reply.split(b"\r\n", 1)
    assert len(body) == int(header[1:]) + 2
    return dict(line.split(":", 1) for line in body.decode().split("\r\n")
                if line and not line.startswith("#"))


def test_info_raft_fields_are_the_contract():
    backend = FakeBackend()
    reply = exchange(make_factory(backend), b"INFO raft\r\n")
    assert reply.split(b"\r\n")[1] == b"# Raft"
    assert _info_fields(reply) == {k: str(v) for k, v in RAFT_INFO.items()}
    assert list(_info_fields(reply)) == [
        "raft_node_id", "raft_role", "raft_term", "raft_leader_id", "raft_commit_index",
        "raft_applied_index", "raft_members"]


def test_info_all_sections():
    backend = FakeBackend()
    backend.data[b"a"] = b"1"
    backend.info_fields["raft_pending_snapshot"] = "no"
    factory = make_factory(backend)
    reply = exchange(factory, b"INFO\r\n")
    text = reply.decode()
    assert [line for line in text.split("\r\n") if line.startswith("#")] == [
        "# Server", "# Clients", "# Keyspace", "# Raft"]
    fields = _info_fields(reply)
    assert fields["redis_version"] == "7.0.0"
    assert fields["connected_clients"] == "1"
    assert fields["maxclients"] == str(factory.limits.connections_max)
    assert fields["db0"] == "keys=1,expires=0,avg_ttl=0"
    assert fields["raft_pending_snapshot"] == "no"
    assert fields["tcp_port"] == "6379"
    assert exchange(factory, b"INFO nosuchsection\r\n") == b"$0\r\n\r\n"
    clients = exchange(factory, b"INFO CLIENTS\r\n")
    assert b"# Clients" in clients and b"# Server" not in clients


def test_info_without_the_raft_contract_fields_is_an_internal_error():
    backend = FakeBackend()
    del backend.info_fields["raft_term"]
    factory = make_factory(backend)
    assert exchange(factory, b"INFO\r\n").startswith(b"-ERR internal error")
    assert factory.stats.internal_errors == 1


def test_readonly_makes_reads_stale_and_readwrite_linearizable_again():
    backend = FakeBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(b"GET a\r\nREADONLY\r\nGET a\r\nREADWRITE\r\nGET a\r\n")
    assert transport.value() == b"$-1\r\n+OK\r\n$-1\r\n+OK\r\n$-1\r\n"
    assert [c.linearizable for c in backend.calls] == [True, False, True]
