"""kvraft.client.resp: the request parser (shapes, splits, quoting, limits) and the
reply encoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.client.errors import ProtocolError
from kvraft.client.resp import (
    RespMap,
    RespParser,
    encode_command,
    encode_error,
    encode_reply,
    split_inline,
)
from kvraft.results import OK, CommandError, Status


def parse_all(data: bytes, parser: RespParser | None = None) -> list[list[bytes]]:
    parser = parser or RespParser()
    parser.feed(data)
    return parser.take()


def parse_pieces(pieces: list[bytes], parser: RespParser | None = None,
                 max_commands: int | None = None) -> list[list[bytes]]:
    """Feed ``pieces`` one by one, taking after each; then drain."""
    parser = parser or RespParser()
    out = []
    fed = 0
    for piece in pieces:
        parser.feed(piece)
        fed += len(piece)
        out += parser.take(max_commands)
        assert 0 <= parser.buffered_bytes <= fed
    while more := parser.take(max_commands):
        out += more
    assert parser.buffered_bytes == 0
    return out


PIPELINE = [[b"SET", b"key:%d" % i, b"value-%d" % i] for i in range(16)]
BURST = b"".join(encode_command(c) for c in PIPELINE)


# -- multibulk -------------------------------------------------------------------------


def test_multibulk_commands_of_a_pipelined_burst_come_out_in_order():
    assert parse_all(BURST) == PIPELINE


def test_binary_arguments_with_crlf_and_empty_arguments_survive():
    command = [b"SET", b"k\r\nk", b"", b"\x00\xff\r\n\r\n", b"$3\r\n"]
    stream = encode_command(command) + encode_command([b"GET", b"k\r\nk"])
    assert parse_all(stream) == [command, [b"GET", b"k\r\nk"]]


def test_non_canonical_but_valid_lengths_are_accepted():
    assert parse_all(b"*02\r\n$03\r\nGET\r\n$1\r\nk\r\n") == [[b"GET", b"k"]]


def test_empty_and_null_multibulk_are_no_command():
    assert parse_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n") == [[b"PING"]]


def test_a_burst_split_at_every_byte_boundary_parses_the_same():
    for split in range(len(BURST) + 1):
        assert parse_pieces([BURST[:split], BURST[split:]]) == PIPELINE, split


def test_a_burst_fed_one_byte_at_a_time_parses_the_same():
    assert parse_pieces([BURST[i:i + 1] for i in range(len(BURST))]) == PIPELINE


def test_an_argument_is_complete_only_with_its_crlf():
    parser = RespParser()
    parser.feed(b"*1\r\n$4\r\nPING")
    assert parser.take() == []
    assert parser.buffered_bytes == 4
    parser.feed(b"\r\n")
    assert parser.take() == [[b"PING"]]
    parser.feed(b"*1\r\n$4\r\nPING")
    assert parser.take() == []
    parser.feed(b"XY")
    with pytest.raises(ProtocolError, match="expected CRLF after bulk data"):
        parser.take()


def test_take_hands_out_at_most_max_commands_and_keeps_the_rest():
    parser = RespParser()
    parser.feed(BURST + b"PING\r\n")
    assert parser.take(5) == PIPELINE[:5]
    assert parser.take(10) == PIPELINE[5:15]
    assert parser.take(10) == PIPELINE[15:] + [[b"PING"]]
    assert parser.take() == []
    assert parser.buffered_bytes == 0


def test_a_half_sent_command_waits_without_error():
    parser = RespParser()
    parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nval")
    assert parser.take() == []
    parser.feed(b"ue\r\n")
    assert parser.take() == [[b"SET", b"k", b"value"]]


def test_a_large_value_fed_in_small_chunks_is_reassembled():
    value = bytes(range(256)) * 4096  # 1 MiB, CRLF pairs and all
    stream = encode_command([b"SET", b"big", value])
    parser = RespParser()
    chunks = [stream[i:i + 1000] for i in range(0, len(stream), 1000)]
    out = []
    for chunk in chunks[:-1]:
        parser.feed(chunk)
        out += parser.take()
        assert out == []
    parser.feed(chunks[-1])
    assert parser.take() == [[b"SET", b"big", value]]


# -- property: any stream, split anywhere, parses like the whole -------------------------

args_strategy = st.lists(st.binary(max_size=24), min_size=1, max_size=4)
words = st.lists(st.sampled_from(
    [b"SET", b"get", b"k", b"value", b"\xff\x00", b"$3", b"a*b", b"12", b"\x7f"]),
    min_size=1, max_size=4)


@st.composite
def streams(draw):
    """A request stream mixing multibulk (binary args) and inline commands (whose words
    never start with "*", which would make them multibulk)."""
    commands, parts = [], []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            args = draw(args_strategy)
            parts.append(encode_command(args))
        else:
            args = draw(words)
            parts.append(b" ".join(args) + draw(st.sampled_from([b"\r\n", b"\n"])))
        commands.append(args)
    return commands, b"".join(parts)


@settings(max_examples=100, deadline=None)
@given(streams(), st.lists(st.integers(0, 2000), max_size=8),
       st.one_of(st.none(), st.integers(1, 5)))
def test_any_split_of_any_stream_parses_like_the_whole(stream, cuts, max_commands):
    commands, data = stream
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert parse_pieces(pieces, max_commands=max_commands) == commands


@st.composite
def mutated_streams(draw):
    """A valid stream with a few bytes overwritten: near-miss garbage."""
    data = bytearray(draw(streams())[1])
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=600), mutated_streams()),
       st.lists(st.integers(1, 64), max_size=20))
def test_garbage_never_crashes_and_memory_stays_bounded(junk, sizes):
    parser = RespParser(line_bytes_max=64, bulk_bytes_max=128, args_max=8,
                        request_bytes_max=256)
    pos = 0
    for size in [*sizes, len(junk)]:
        parser.feed(junk[pos:pos + size])
        pos += size
        try:
            for command in parser.take():
                assert 1 <= len(command) <= 8 and all(type(a) is bytes for a in command)
        except ProtocolError as e:
            assert str(e).startswith("Protocol error: ")
            return
        assert parser.buffered_bytes <= 128 + 2 + 256


# -- inline commands -------------------------------------------------------------------


@pytest.mark.parametrize(("line", "words"), [
    (b"SET key value", [b"SET", b"key", b"value"]),
    (b"  SET\tkey   value  ", [b"SET", b"key", b"value"]),
    (b'SET "a b" c', [b"SET", b"a b", b"c"]),
    (b'SET k ""', [b"SET", b"k", b""]),
    (b'"\\x41\\x4a\\x4"', [b"AJx4"]),
    (b'"\\xZZ"', [b"xZZ"]),
    (b'"\\n\\r\\t\\b\\a\\"\\\\\\q"', [b"\n\r\t\b\a\"\\q"]),
    (b"'it\\'s' 'a\\nb'", [b"it's", b"a\\nb"]),
    (b"'say \"hi\"'", [b'say "hi"']),
    (b'foo"bar baz" qux', [b"foobar baz", b"qux"]),
    (b"\xff\x00 x", [b"\xff\x00", b"x"]),
])
def test_inline_quoting_follows_redis(line, words):
    assert split_inline(line) == words
    assert parse_all(line + b"\r\n") == [words]


@pytest.mark.parametrize("line", [
    b'SET "unterminated', b"SET 'unterminated", b'"a"b', b"'a'b", b'"ends with \\',
])
def test_unbalanced_quotes_are_a_protocol_error(line):
    with pytest.raises(ProtocolError, match="unbalanced quotes"):
        parse_all(line + b"\r\n")


def test_blank_inline_lines_are_skipped():
    assert parse_all(b"\r\n  \r\n\nPING\r\n\t\n") == [[b"PING"]]


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "message"), [
    (b"*abc\r\n", "Protocol error: invalid multibulk length"),
    (b"*1\r\n+PING\r\n", "Protocol error: expected '$', got '+'"),
    (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
    (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
    (b"*1\r\n$99999999999999999999\r\n", "Protocol error: invalid bulk length"),
    (b"*1\n$4\nPING\n", "Protocol error: multibulk length line must end with CRLF"),
    (b"*1\r\n$4\r\nPINGxx", "Protocol error: expected CRLF after bulk data"),
])
def test_garbage_is_a_protocol_error(data, message):
    with pytest.raises(ProtocolError) as caught:
        parse_all(data)
    assert str(caught.value) == message


def test_commands_before_bad_bytes_come_first_then_the_error_sticks():
    parser = RespParser()
    parser.feed(b"PING\r\n*1\r\n$4\r\nECHO\r\n*x\r\n")
    assert parser.take() == [[b"PING"], [b"ECHO"]]
    with pytest.raises(ProtocolError):
        parser.take()
    parser.feed(b"PING\r\n")  # ignored: the stream is unusable
    with pytest.raises(ProtocolError):
        parser.take()
    assert parser.buffered_bytes == 0


# -- limits ------------------------------------------------------------------------------


def test_a_huge_bulk_header_is_refused_before_any_body_arrives():
    parser = RespParser()
    parser.feed(b"*2\r\n$3\r\nGET\r\n$2000000000\r\n")
    with pytest.raises(ProtocolError) as caught:
        parser.take()
    assert "larger than bulk_bytes_max (16777216 bytes)" in str(caught.value)
    assert parser.buffered_bytes == 0


def test_bulk_bytes_max_is_inclusive():
    parser = RespParser(bulk_bytes_max=10, request_bytes_max=100)
    assert parse_all(encode_command([b"SET", b"k", b"x" * 10]), parser) == [
        [b"SET", b"k", b"x" * 10]]
    with pytest.raises(ProtocolError, match="bulk_bytes_max"):
        parse_all(encode_command([b"SET", b"k", b"x" * 11]), RespParser(bulk_bytes_max=10))


def test_args_max_bounds_multibulk_and_inline_commands():
    parser = RespParser(args_max=3)
    assert parse_all(b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", parser) == [[b"a", b"b", b"c"]]
    with pytest.raises(ProtocolError, match=r"invalid multibulk length 4: more than args_max"):
        parse_all(b"*4\r\n", RespParser(args_max=3))
    with pytest.raises(ProtocolError, match="too many arguments in inline request"):
        parse_all(b"a b c d\r\n", RespParser(args_max=3))
    with pytest.raises(ProtocolError, match="more than args_max"):
        parse_all(b"*65537\r\n")  # the default, 65536


def test_request_bytes_max_is_checked_at_each_header_before_its_body():
    parser = RespParser(bulk_bytes_max=100, request_bytes_max=150)
    parser.feed(b"*3\r\n$3\r\nSET\r\n$100\r\n" + b"x" * 100 + b"\r\n$100\r\n")
    with pytest.raises(ProtocolError, match=r"request_bytes_max \(150 bytes\)"):
        parser.take()


def test_request_bytes_max_cannot_be_below_bulk_bytes_max():
    with pytest.raises(ValueError, match="request_bytes_max"):
        RespParser(bulk_bytes_max=100, request_bytes_max=99)


def test_a_long_inline_line_is_refused_and_never_buffered_past_the_limit():
    parser = RespParser(line_bytes_max=100)
    for _ in range(10):  # 100 bytes of a line: still legal, waiting for its end
        parser.feed(b"a" * 10)
        assert parser.take() == []
    assert parser.buffered_bytes == 100
    parser.feed(b"\r")
    assert parser.take() == []
    parser.feed(b"b")  # 102 bytes without a newline: no valid line is that long
    with pytest.raises(ProtocolError, match=r"too big inline request \(line_bytes_max is 100"):
        parser.take()
    assert parser.buffered_bytes == 0


def test_line_bytes_max_is_inclusive_and_independent_of_chunking():
    line = b"x" * 100
    assert parse_all(line + b"\r\n", RespParser(line_bytes_max=100)) == [[line]]
    assert parse_all(line + b"\n", RespParser(line_bytes_max=100)) == [[line]]
    with pytest.raises(ProtocolError, match="too big inline request"):
        parse_all(line + b"x\n", RespParser(line_bytes_max=100))
    with pytest.raises(ProtocolError, match="too big inline request"):
        parse_all(line + b"x\r\n", RespParser(line_bytes_max=100))


def test_a_header_line_without_its_end_is_bounded_too():
    parser = RespParser(line_bytes_max=16)
    parser.feed(b"*1\r\n$" + b"1" * 17)
    with pytest.raises(ProtocolError, match="too big bulk count string"):
        parser.take()
    with pytest.raises(ProtocolError, match="too big mbulk count string"):
        parse_all(b"*" + b" " * 20, RespParser(line_bytes_max=16))


# -- replies -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "wire"), [
    (None, b"$-1\r\n"),
    (b"", b"$0\r\n\r\n"),
    (b"a\r\nb", b"$4\r\na\r\nb\r\n"),
    (0, b":0\r\n"),
    (-(1 << 63), b":-9223372036854775808\r\n"),
    (True, b":1\r\n"),
    ([], b"*0\r\n"),
    ([b"a", None, 3], b"*3\r\n$1\r\na\r\n$-1\r\n:3\r\n"),
    ((b"t",), b"*1\r\n$1\r\nt\r\n"),
    ([[b"x"], []], b"*2\r\n*1\r\n$1\r\nx\r\n*0\r\n"),
    (OK, b"+OK\r\n"),
    (Status("PONG"), b"+PONG\r\n"),
    (Status("two\r\nlines"), b"+two  lines\r\n"),
    (CommandError("WRONGTYPE Operation against a key holding the wrong kind of value"),
     b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
    ([OK, CommandError("ERR no")], b"*2\r\n+OK\r\n-ERR no\r\n"),
])
def test_encode_reply(value, wire):
    assert encode_reply(value) == wire


@pytest.mark.parametrize(("value", "resp2", "resp3"), [
    (None, b"$-1\r\n", b"_\r\n"),
    ([None, [None]], b"*2\r\n$-1\r\n*1\r\n$-1\r\n", b"*2\r\n_\r\n*1\r\n_\r\n"),
    (RespMap([(b"k", 1), (b"m", RespMap())]),
     b"*4\r\n$1\r\nk\r\n:1\r\n$1\r\nm\r\n*0\r\n", b"%2\r\n$1\r\nk\r\n:1\r\n$1\r\nm\r\n%0\r\n"),
    (b"same", b"$4\r\nsame\r\n", b"$4\r\nsame\r\n"),
])
def test_resp3_differs_only_in_null_and_map(value, resp2, resp3):
    assert encode_reply(value) == resp2
    assert encode_reply(value, resp3=True) == resp3


@pytest.mark.parametrize("value", ["a str", 1.5, {b"k": b"v"}, object()])
def test_encoding_an_unknown_type_is_a_type_error(value):
    with pytest.raises(TypeError, match="cannot encode"):
        encode_reply(value)


def test_deeply_nested_arrays_encode_without_recursion():
    value: list = []
    for _ in range(5000):
        value = [value]
    assert encode_reply(value) == b"*1\r\n" * 5000 + b"*0\r\n"


def _bulk_array(items: list[bytes]) -> bytes:
    """The RESP array of bulk strings, spelled out one element at a time."""
    return b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(i), i) for i in items)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=20) | st.binary(min_size=4090, max_size=4100),
                min_size=1, max_size=30))
def test_an_array_of_bulk_strings_is_encoded_element_for_element(items):
    # KEYS and MGET answers take a C-level path (a million keys must not block the
    # node for seconds); it must write exactly what the general encoder writes.
    assert encode_reply(items) == _bulk_array(items)
    assert encode_reply(items, resp3=True) == _bulk_array(items)


@pytest.mark.parametrize("items", [
    [b"", b"x" * 4095, b"y" * 4096, b"z" * 70000],  # the header table ends at 4095
    [b"k1", None, b"k3"],  # MGET with a missing key: the general path
    [b"k1", bytearray(b"k2")],
])
def test_arrays_the_fast_path_declines_or_edges_it_meets(items):
    expected = b"*%d\r\n" % len(items) + b"".join(
        b"$-1\r\n" if i is None else b"$%d\r\n%s\r\n" % (len(i), bytes(i)) for i in items)
    assert encode_reply(items) == expected


def test_error_lines_cannot_break_the_stream():
    assert encode_error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"


def test_encode_command_round_trips_through_the_parser():
    command = [b"MSET", b"a", b"\r\n", b"", b"*1\r\n"]
    assert parse_all(encode_command(command)) == [command]


# -- take_whole: the connection's fast path ----------------------------------------------


multibulk_streams = st.lists(st.lists(st.binary(max_size=12), min_size=1, max_size=3),
                             min_size=1, max_size=5).map(
    lambda commands: b"".join(encode_command(c) for c in commands))


# Pipelines of commands with one argument count: take_whole checks them column by column.
uniform_streams = st.integers(1, 3).flatmap(
    lambda count: st.lists(st.lists(st.binary(max_size=12), min_size=count, max_size=count),
                           min_size=2, max_size=6)).map(
    lambda commands: b"".join(encode_command(c) for c in commands))


@settings(max_examples=300, deadline=None)
@given(st.one_of(multibulk_streams, uniform_streams, streams().map(lambda s: s[1]),
                 mutated_streams(), uniform_streams.flatmap(
                     lambda data: st.integers(0, len(data) - 1).map(
                         lambda at: data[:at] + b"\r\n" + data[at + 1:])),
                 st.binary(max_size=200)),
       st.integers(0, 8))
def test_take_whole_is_take_or_declines_without_consuming(data, max_commands):
    # Small byte limits: take_whole checks each argument against them. Byte limits
    # above any input: only the shape and args_max are checked.
    for limits in ({"line_bytes_max": 64, "bulk_bytes_max": 16, "args_max": 3,
                    "request_bytes_max": 32}, {"args_max": 3}):
        check_take_whole(limits, data, max_commands)


def check_take_whole(limits: dict, data: bytes, max_commands: int) -> None:
    fast = RespParser(**limits)
    got = fast.take_whole(data, max_commands)
    exact = RespParser(**limits)
    exact.feed(data)
    try:
        expected = exact.take(max_commands)
    except ProtocolError:
        expected = None
    if got is not None:
        # Only whole, valid input is taken, exactly as the exact parser reads it.
        assert got == expected and exact.buffered_bytes == 0 and 1 <= len(got) <= max_commands
        assert fast.buffered_bytes == 0
        follow = encode_command([b"GET", b"k"])
        fast.feed(follow)
        assert fast.take() == [[b"GET", b"k"]]
    else:
        # Declined: nothing was consumed; feeding it gives what the exact parser gives.
        assert fast.buffered_bytes == 0
        fast.feed(data)
        try:
            assert fast.take(max_commands) == expected
        except ProtocolError:
            assert expected is None


def test_take_whole_takes_one_command_and_a_whole_pipeline():
    assert RespParser().take_whole(encode_command([b"GET", b"k"]), 1) == [[b"GET", b"k"]]
    assert RespParser().take_whole(BURST, 16) == PIPELINE
    big = [b"SET", b"k", b"v" * 5000]  # longer than the small-header table
    assert RespParser().take_whole(encode_command(big) * 2, 2) == [big, big]
    assert RespParser(bulk_bytes_max=4999).take_whole(encode_command(big), 1) is None


@pytest.mark.parametrize("data", [
    BURST[:-1],  # the last command is not complete
    BURST[:-10],
    b"GET k\r\n",  # inline
    encode_command([b"SET", b"k\r\nk", b"v"]),  # an argument holding CRLF
    b"*1\r\n$04\r\nPING\r\n",  # valid but not canonical
    b"*0\r\n",
    b"",
])
def test_take_whole_declines_what_it_does_not_take_whole(data):
    parser = RespParser()
    assert parser.take_whole(data, 100) is None
    assert parser.buffered_bytes == 0


def test_take_whole_declines_beyond_max_commands_and_while_input_is_held():
    assert RespParser().take_whole(BURST, 15) is None
    parser = RespParser()
    parser.feed(BURST[:5])
    assert parser.take() == []
    assert parser.take_whole(BURST[5:], 100) is None  # the rest belongs to held input
    parser.feed(BURST[5:])
    assert parser.take() == PIPELINE


def test_ready_says_whether_take_can_return_commands():
    parser = RespParser()
    assert not parser.ready
    parser.feed(BURST[:-1])
    assert parser.ready
    assert parser.take() == PIPELINE[:-1]
    assert not parser.ready  # the last command is incomplete
    parser.feed(BURST[-1:])
    assert parser.ready
    assert parser.take() == PIPELINE[-1:]
