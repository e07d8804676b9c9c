"""Result values shared by the state machines and the client layer.

A state machine's ``apply`` and ``query`` return plain Python values; the client layer
turns them into RESP2 replies with exactly this mapping (a CONTRACT on both sides):

============================  ======================================================
result                        RESP2 reply
============================  ======================================================
``None``                      nil (``$-1``)
``bytes``                     bulk string
``int``                       integer (``:``)
``list`` (of these, nested)   array (``*``)
``Status``                    simple string (``+OK``)
``CommandError``              error (``-ERR ...``, ``-WRONGTYPE ...``)
============================  ======================================================

Both classes are values, not control flow: a machine *returns* a ``CommandError`` for
bad input (it never raises one, since a raise inside ``apply`` would halt replication).
"""

from __future__ import annotations

__all__ = ["OK", "CommandError", "Status"]


class Status(str):
    """A simple-string reply such as ``OK``: the reply text, without ``+`` or CRLF.

    Use the module-level ``OK`` singleton for the common case instead of building one.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Status({str.__repr__(self)})"


OK = Status("OK")
"""The ``+OK`` reply, shared: results are immutable, so one object serves everyone."""


class CommandError:
    """An error reply, e.g. ``CommandError("ERR value is not an integer or out of range")``.

    ``message`` follows Redis conventions: an upper-case code word (``ERR``, ``WRONGTYPE``,
    ``NOPERM``...), a space, then a sentence saying what was wrong. It never contains CR or
    LF (they would break RESP framing), so the constructor turns them into spaces.
    Instances compare equal when their messages are equal.
    """

    __slots__ = ("message",)

    message: str

    def __init__(self, message: str) -> None:
        if "\r" in message or "\n" in message:
            message = message.replace("\r", " ").replace("\n", " ")
        self.message = message

    @property
    def code(self) -> str:
        """The code word that starts the message (``"ERR"``, ``"WRONGTYPE"``...)."""
        return self.message.split(" ", 1)[0]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CommandError):
            return self.message == other.message
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.message)

    def __repr__(self) -> str:
        return f"CommandError({self.message!r})"

    def __str__(self) -> str:
        return self.message
