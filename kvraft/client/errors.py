"""Errors of the client layer, and the Redis error line each one becomes.

A backend (``IClientBackend``) fails a request's Deferred with one of the
``BackendError`` subclasses below; the connection turns it into the Redis error reply
named by ``reply_line()``. Redis clients look only at the first word of an error (the
code: ``ERR``, ``CLUSTERDOWN``, ``TIMEOUT``, ``NOPERM``...), so the code is fixed per
class and the rest says what happened and what to do.

Any other exception from a backend is a bug: the connection logs it, answers
``-ERR internal error ...`` and keeps serving.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base of the failures a backend may report to a client.

    ``str(error)`` (the constructor's message) is the detail shown to the client; when it
    is empty, ``default_detail`` is shown instead.
    """

    code = "ERR"
    default_detail = "the request failed"

    def reply_line(self) -> str:
        """The error reply text, without the leading ``-`` and the CRLF."""
        detail = str(self) or self.default_detail
        return f"{self.code} {detail}"


class NoLeaderError(BackendError):
    """No leader is known (an election is running, or this node is cut off); nothing was
    done, so the client may retry the same command safely."""

    code = "CLUSTERDOWN"
    default_detail = "no leader: the cluster is electing a leader; retry shortly"


class OutcomeUnknownError(BackendError):
    """The command was handed to Raft but its outcome was not learned in time (leader
    change, partition, shutdown): it may or may not have been applied."""

    code = "TIMEOUT"
    default_detail = (
        "outcome unknown: the command may or may not have taken effect; read the key "
        "before retrying")


class OverloadedError(BackendError):
    """The node refuses more work for now (too many requests in flight); nothing was
    done."""

    code = "ERR"
    default_detail = "too many requests in flight; retry with backoff"

    def reply_line(self) -> str:
        """``ERR server busy: <detail>``."""
        return f"ERR server busy: {str(self) or self.default_detail}"


class PermissionDenied(BackendError):  # noqa: N818 (the name the node uses)
    """The connection's identity may not run this command."""

    code = "NOPERM"
    default_detail = "this user has no permissions to run this command"


class ProtocolError(Exception):
    """The client sent bytes that are not RESP2 or an inline command, or that break a
    limit. The connection answers ``-ERR <message>`` and closes, as Redis does: after
    garbage, the position of the next command in the stream is unknown."""


class InvalidCommandError(Exception):
    """A well-formed request naming an unknown command, or with arguments the command
    table rejects. ``str(error)`` is the complete Redis error text (for example
    ``ERR syntax error``); the connection answers it and keeps serving."""
