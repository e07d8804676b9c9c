"""kvraft.results: the reply values shared by state machines and the client layer."""

import pytest

from kvraft.results import OK, CommandError, Status


def test_status_is_a_str_with_its_own_type():
    assert isinstance(OK, str) and type(OK) is Status
    assert OK == "OK"
    assert repr(OK) == "Status('OK')"
    assert not hasattr(OK, "__dict__")  # slotted: no per-instance dict


def test_ok_is_a_singleton_instance():
    from kvraft import results

    assert results.OK is OK


def test_command_error_carries_message_and_code():
    error = CommandError("ERR value is not an integer or out of range")
    assert error.message == "ERR value is not an integer or out of range"
    assert error.code == "ERR"
    assert str(error) == error.message
    assert CommandError("WRONGTYPE Operation against a key").code == "WRONGTYPE"
    assert not hasattr(error, "__dict__")


def test_command_error_equality_and_hash_follow_the_message():
    assert CommandError("ERR a") == CommandError("ERR a")
    assert CommandError("ERR a") != CommandError("ERR b")
    assert CommandError("ERR a") != "ERR a"
    assert len({CommandError("ERR a"), CommandError("ERR a")}) == 1


@pytest.mark.parametrize("message", ["ERR bad\r\nthing", "ERR bad\nthing", "ERR bad\rthing"])
def test_command_error_never_holds_line_breaks(message):
    """CR or LF inside an error reply would break RESP framing."""
    error = CommandError(message)
    assert "\r" not in error.message and "\n" not in error.message
    assert error.message.startswith("ERR bad") and error.message.endswith("thing")
