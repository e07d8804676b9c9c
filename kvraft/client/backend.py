"""The seam between the client protocol and the node: ``IClientBackend``, and the
optional access-control hook ``IClientACL``.

The client layer parses and validates; a backend executes. Commands reach a backend
normalized by ``kvraft.client.commands``: a list of bytes, the upper-cased command name
first (``[b"SET", b"k", b"v", b"NX"]``). The result types a backend may return are the
ones ``kvraft.client.resp.encode_reply`` knows (``None``, ``bytes``, ``int``, ``list``,
``kvraft.results.Status``, ``kvraft.results.CommandError``).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface, implementer

RAFT_INFO_FIELDS = (
    "raft_node_id",
    "raft_role",
    "raft_term",
    "raft_leader_id",
    "raft_commit_index",
    "raft_applied_index",
    "raft_members",
)
"""The fields of INFO's ``# Raft`` section, in the order shown. A CONTRACT: operators'
scripts and the cluster tools parse them; rename nothing, only add."""


class IClientBackend(Interface):
    """What the client connections need from the node.

    Called from the reactor thread only. Every Deferred must fire eventually (a backend
    bounds each request with its own timeout and fails it with
    ``OutcomeUnknownError``): a connection writes replies in request order, so one
    Deferred that never fires stalls that connection. Failures use the exceptions of
    ``kvraft.client.errors``; anything else is logged as a bug and answered
    ``-ERR internal error``.

    Optional fast paths, found by attribute (``kvraft.node.RaftNodeService`` has all
    four; ``kvraft.metrics.MeteredBackend`` passes them on):
    ``submit_write(command, done, token)`` and ``submit_read(command, linearizable,
    done, token)`` answer by calling ``done(token, result)`` exactly once (a
    ``BackendError`` instance for a failure) instead of returning a Deferred;
    ``submit_writes(commands, done, token)`` and ``submit_reads(commands,
    linearizable, done, token)`` take a pipeline's commands (in order, each a list of
    bytes) and call ``done(token, results)`` once, with a list of the results in order or
    one ``BackendError`` for all. A connection uses the grouped pair only if all four
    are there. ``client_returned(answered_s)``: a connection with no request
    outstanding got its next one, and ``answered_s`` is when its last replies were
    written (reactor seconds); called before that request is submitted (the node
    gathers returning clients into one entry: ``raft.proposal_gather_ms``).
    """

    node_id = Attribute("This node's id (str), shown by INFO and HELLO.")

    def write(command: list) -> object:  # noqa: N805 (zope: no self)
        """Replicate ``command`` through Raft and apply it; a Deferred firing with the
        state machine's result. Used for every command flagged ``write``."""

    def read(command: list, linearizable: bool) -> object:  # noqa: N805
        """Answer a read-only ``command``; a Deferred firing with the result.
        ``linearizable=True`` (the default of a connection) must reflect every write
        acknowledged before the read arrived (ReadIndex); ``False`` (the connection sent
        READONLY) may answer from this node's possibly stale state."""

    def admin(command: list) -> object:  # noqa: N805
        """Run an admin command (``FLUSHALL``, ``RAFT.MEMBERS``, ``RAFT.ADD``,
        ``RAFT.PROMOTE``, ``RAFT.REMOVE``, ``RAFT.TRANSFER``, ``RAFT.SNAPSHOT``); a
        Deferred firing with the result. Arguments are checked for count only: the
        backend checks their meaning and answers a ``CommandError`` when wrong."""

    def info() -> dict:
        """A flat dict for INFO, read synchronously. It must hold every key of
        ``RAFT_INFO_FIELDS`` (shown in the ``# Raft`` section); other ``raft_*`` keys
        are shown there too. An optional ``keys`` (int: keys in this node's state
        machine) fills the ``# Keyspace`` section; any other key is shown in
        ``# Server``. Values are str, bytes, int or float."""


class IClientACL(Interface):
    """Decides whether a connection's identity may run a command."""

    def authorize(identity: str | None, flags: object) -> bool:  # noqa: N805
        """Whether ``identity`` (the TLS client certificate CN, ``None`` on a plaintext
        loopback listener) may run a command with ``flags`` (a
        ``kvraft.client.commands.CommandFlag``). Called for EVERY command, connection
        commands (``CommandFlag.LOCAL``: PING, HELLO, QUIT...) included: an ACL normally
        lets any identity run those. Must be fast and must not block."""


@implementer(IClientACL)
class AllowAll:
    """The default ACL: every identity may run every command."""

    def authorize(self, identity: str | None, flags: object) -> bool:
        """Always ``True``."""
        return True
