"""What a driver may take from RaftCore between Readies (while one is outstanding).

A driver that persists in a writer thread, or that lets the reactor run between
handing out a Ready and writing it, keeps stepping messages into the core meanwhile.
These calls hand out at once what needs no durability of the outstanding Ready:

* ``take_messages()``: what the next Ready would put in ``messages`` (heartbeats and
  their answers, new MsgApps, ReadIndex traffic, vote requests). Never anything of
  ``messages_after_persist``.
* ``take_read_states()``: ReadIndex answers.
* ``take_committed_entries()``: committed entries that are durable here, to apply now.

None of them is repeated by a later Ready. A mixin of RaftCore, like leader.py.
"""

from __future__ import annotations

from kvraft.raft.types import Entry, Message, ReadState


class EarlyOutputMixin:
    """``take_*`` for RaftCore (it uses the core's log, queues and roles)."""

    def take_messages(self) -> list[Message]:
        """Messages that may be sent now, even while a Ready is outstanding.

        These are the ones a Ready would put in ``messages`` (never
        ``messages_after_persist``): they speak for no durable state, so a driver that
        persists in a writer thread sends them at once instead of holding heartbeats,
        heartbeat responses, ReadIndex rounds and new MsgApps behind an fsync. The next
        Ready does not repeat them.
        """
        msgs, self._msgs = self._msgs, []
        if msgs:
            # The open ReadIndex round's heartbeats are leaving: later reads need new ones.
            self.read_only.seal()
        return msgs

    def take_read_states(self) -> list[ReadState]:
        """ReadIndex answers available now, even while a Ready is outstanding (a read
        may be served once the applied index reaches its ``index``). The next Ready
        does not repeat them."""
        states, self._read_states = self._read_states, []
        return states

    def take_committed_entries(self) -> list[Entry]:
        """Committed entries to apply now, even while a Ready is outstanding.

        Only entries this node holds durably (confirmed by an earlier ``advance``) and
        that no Ready handed out yet; none while a received snapshot is pending. They
        count as applied when this returns (the leader releases their bytes from
        ``max_uncommitted_bytes``): apply them at once, in order.

        They come after every committed entry the outstanding Ready handed out, so call
        this only once that Ready's committed entries that were already durable when it
        was handed out (index at most the last index of the write before it) are
        applied. Its other committed entries (within its own ``entries``) are never
        overtaken: these stop at the durable index, below them.
        """
        log = self.log
        if log.unstable.snapshot is not None:
            return []
        lo = log.applying + 1
        hi = min(log.committed, self._durable_last_index())
        if lo > hi:
            return []
        entries = log.slice(lo, hi + 1, log.max_applying_bytes)
        log.accept_applying(entries[-1].index)
        self._applied(entries)
        self._maybe_auto_leave()
        return entries
