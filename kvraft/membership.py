"""Cluster membership for the node service: member addresses, configuration changes,
leadership transfer, the preferred leader, and the ``RAFT.*`` admin commands.

Which kind of change, and why: every change of the voter set goes through **joint
consensus** (Raft thesis 4.3; ``ConfChange(joint=True)``): the leader first commits
C_old,new, whose decisions need a majority of both the old and the new voters, then
proposes C_new itself (``maybe_leave_joint``; a new leader does it too, so a change
survives leader crashes). Joint consensus stays safe across leader changes whatever the
timing, while single-server changes need the extra rule that a new leader commit an
entry of its term before its first change (the bug found in 2015), a rule that followers
forwarding proposals would make easy to bypass. Adding or removing a *learner* leaves
the voters alone, so it is a simple one-step change.

* ``RAFT.ADD id host:port [learner|voter]``: learner by default, so that an empty node
  never counts toward a quorum while it catches up (adding never stalls commits).
* ``RAFT.PROMOTE id``: refused unless the learner is within ``promote_lag_entries_max``
  entries of the leader and replicating.
* ``RAFT.REMOVE id``: a voter (the leader included) or a learner. A leader that removes
  itself hands leadership to a member of the new configuration while the change is
  joint (at most ``transfer_timeout_ms``), so the leave is committed by the next leader
  without waiting for an election; failing that, it leaves itself and steps down when
  the change commits.
* A change is answered once it is in effect (the joint configuration left); a second
  change while one is pending is refused: "a membership change is in progress".

Member addresses travel in the change (``ConfChangeSingle.context`` = ``host:port``) and
in snapshots (the node header), and are saved in the stable store's metadata. An
address is learned when its member is added; after that each node keeps its own (a
node's ``cluster.members`` may route a peer through a proxy, for instance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from kvraft import config as config_module
from kvraft.client.errors import NoLeaderError, OutcomeUnknownError
from kvraft.raft import (
    NONE,
    ConfChange,
    ConfChangeError,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    ProgressState,
    ProposalDropped,
    Role,
    decode_conf_change,
    encode_conf_change,
)
from kvraft.results import OK, CommandError

if TYPE_CHECKING:
    from kvraft.node import RaftNodeService

log = Logger(namespace="kvraft.membership")

change_timeout_s = 60.0
"""A membership change not in effect after this long is answered "outcome unknown"."""
preferred_leader_hold_elections = 3
"""Election timeouts the preferred leader must stay caught up before it gets leadership
back: a node that flaps is not handed leadership on every return."""
CHANGE_PENDING = ("ERR a membership change is in progress; retry when it commits "
                  "(RAFT.MEMBERS shows the configuration)")


@dataclass
class _ChangeWaiter:
    """An admin command waiting for its configuration change to take effect."""

    index: int
    data: bytes
    deferred: defer.Deferred
    joint: bool
    entered: bool = False
    timer: Any = None


@dataclass
class _TransferWaiter:
    target: str
    deferred: defer.Deferred
    timer: Any = None


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); ValueError saying what is wrong."""
    address = config_module.parse_address(text, "address")
    if not 0 < address.port < 65536:
        raise ValueError(f"address {text!r}: the port must be 1..65535")
    return address.host, address.port


class Membership:
    """The membership half of a ``RaftNodeService`` (``node``): see the module docstring."""

    def __init__(self, node: RaftNodeService):
        self.node = node
        self.node_id = node.node_id
        self.addresses: dict[str, str] = {}
        self.joining = False  # started with a placeholder configuration: not a member yet
        settings = node.config.raft
        self.transfer_timeout_s = settings.transfer_timeout_ms / 1000.0
        self.promote_lag_entries_max = settings.promote_lag_entries_max
        self.preferred_leader = node.config.preferred_leader
        self.preferred_hold_s = (preferred_leader_hold_elections
                                 * settings.election_timeout_ms / 1000.0)
        self._changes: list[_ChangeWaiter] = []
        self._transfers: list[_TransferWaiter] = []
        self._handoff_deadline: float | None = None
        self._preferred_since: float | None = None
        self._preferred_retry_at = 0.0

    # -- state ---------------------------------------------------------------------------

    @property
    def core(self):
        """The node's RaftCore."""
        return self.node.core

    def conf_state(self) -> ConfState:
        """The configuration in effect (as of the last applied change)."""
        core = self.node.core
        return core.tracker.conf_state() if core is not None else ConfState()

    def load(self, metadata: dict, snapshot_addresses: dict[str, str]) -> None:
        """Addresses at start: the saved ones, plus any only the snapshot knows."""
        self.addresses = {str(k): str(v) for k, v in metadata.get("addresses", {}).items()}
        for node, address in snapshot_addresses.items():
            self.addresses.setdefault(node, address)

    def learn_addresses(self, addresses: dict[str, str]) -> None:
        """Addresses from an installed snapshot: fill in members we did not know."""
        changed = False
        for node, address in addresses.items():
            if node not in self.addresses:
                self.addresses[node] = address
                changed = True
        if changed:
            self._save()

    def _save(self) -> None:
        stable = self.node.storage.stable
        metadata = stable.metadata()
        metadata["addresses"] = dict(sorted(self.addresses.items()))
        metadata.pop("join", None)
        stable.save_metadata(metadata)

    def sync_transport(self) -> None:
        """Dial exactly the members we know an address for (all, while joining)."""
        transport = self.node.transport
        members = set(self.conf_state().members()) - {self.node_id}
        for node in sorted(members):
            address = self.addresses.get(node)
            if address is None:
                log.warn("no address known for member {node}; messages to it are dropped "
                         "(add it to cluster.members)", node=node)
                continue
            try:
                transport.add_peer(node, parse_address(address))
            except ValueError as e:
                log.error("member {node} has an unusable address: {error}", node=node,
                          error=str(e))
        if not self.joining:
            for node in set(transport.peers) - members:
                transport.remove_peer(node)

    # -- applying committed changes ----------------------------------------------------

    def apply(self, index: int, data: bytes) -> None:
        """A committed configuration change at ``index`` (every node, in log order)."""
        core = self.node.core
        before = core.tracker.conf_state()
        error = None
        try:
            cc = decode_conf_change(data)
            added = {c.node_id for c in cc.changes
                     if c.type != ConfChangeType.RemoveNode} - set(before.members())
            if added:
                # A node just added must get a snapshot that includes it.
                self.node.snapshotter.conf_index = index
            cs = core.apply_conf_change(cc)
        except ConfChangeError as e:
            # Every node refuses the same change the same way: log it and go on.
            log.warn("ignoring membership change at {index}: {error}", index=index,
                     error=str(e))
            error = str(e)
            cs = before
        else:
            self._learn(cc, before, cs)
            log.info("membership at {index}: voters {voters}{outgoing}, learners {learners}",
                     index=index, voters=",".join(cs.voters) or "-",
                     outgoing=(" (joint with " + ",".join(cs.voters_outgoing) + ")"
                               if cs.is_joint() else ""),
                     learners=",".join(cs.learners) or "-")
            me = self.node_id
            if me in before.members() and (me not in cs.members() or (
                    me not in cs.voters and me not in cs.learners and cs.is_joint())):
                # While C_old,new is in effect a removed voter still votes; the new
                # leader stops talking to it once C_new applies, so this is the last
                # configuration change it may ever see.
                log.warn("this node ({node}) is being removed from the cluster; once the "
                         "change completes it takes no part and may be stopped", node=me)
        self._resolve_changes(index, data, cs, error)
        if not cs.is_joint():
            self._handoff_deadline = None

    def _learn(self, cc: ConfChange, before: ConfState, after: ConfState) -> None:
        changed = False
        for c in cc.changes:
            if c.type != ConfChangeType.RemoveNode and c.node_id not in before.members() \
                    and c.context:
                address = c.context.decode("utf-8", "replace")
                if self.addresses.get(c.node_id) != address:
                    self.addresses[c.node_id] = address
                    changed = True
        for node in set(before.members()) - set(after.members()):
            if self.addresses.pop(node, None) is not None and node != self.node_id:
                changed = True
        if changed:
            self._save()
        self.sync_transport()

    def installed_snapshot(self, header: dict) -> None:
        """The node installed a snapshot from the leader (configuration from its
        metadata is already in the core)."""
        self.joining = False
        self.learn_addresses(header.get("addresses", {}))
        self.sync_transport()

    # -- keeping configurations moving (called after applies and on every tick) --------

    def maybe_leave_joint(self) -> None:
        """Leader: propose C_new once C_old,new is in effect (after handing leadership
        to a member of C_new if this node is leaving)."""
        core = self.node.core
        if core is None or core.role != Role.Leader:
            return
        tracker = core.tracker
        if not tracker.is_joint() or tracker.auto_leave:
            return
        if self.node_id not in tracker.voters:
            now = self.node.reactor.seconds()
            if self._handoff_deadline is None:
                self._handoff_deadline = now + self.transfer_timeout_s
            if now < self._handoff_deadline:
                if core.lead_transferee == NONE:
                    target = self.best_transferee(tracker.voters)
                    if target is not None:
                        log.info("leaving the cluster: handing leadership to {target}",
                                 target=target)
                        core.transfer_leadership(target)
                        self.node._schedule()
                return
        try:
            core.propose_conf_change(ConfChange(changes=()))
        except ProposalDropped:
            return  # the entering change is not applied yet, or a transfer is running
        self.node._schedule()

    def after_apply(self, applied: int) -> None:
        """After each applied run: fail changes whose entry was replaced (a leader change
        dropped it) and move a joint configuration on."""
        for waiter in list(self._changes):
            if waiter.index <= applied and not waiter.entered:
                self._end_change(waiter, CommandError(
                    "ERR the membership change was lost in a leader change; check "
                    "RAFT.MEMBERS and retry"))
        self.maybe_leave_joint()

    def tick(self) -> None:
        """Periodic: leave a joint configuration; hand leadership to the preferred
        leader once it has been caught up for a while; time out transfers."""
        self.maybe_leave_joint()
        self._maybe_prefer()

    def _maybe_prefer(self) -> None:
        core, preferred = self.node.core, self.preferred_leader
        if (not preferred or core is None or core.role != Role.Leader
                or preferred == self.node_id or core.tracker.is_joint()
                or preferred not in core.tracker.voters or core.lead_transferee != NONE):
            self._preferred_since = None
            return
        pr = core.tracker.progress.get(preferred)
        now = self.node.reactor.seconds()
        if pr is None or not self._caught_up(pr):
            self._preferred_since = None
            return
        if self._preferred_since is None:
            self._preferred_since = now
        if now - self._preferred_since >= self.preferred_hold_s \
                and now >= self._preferred_retry_at:
            log.info("handing leadership back to the preferred leader {node}", node=preferred)
            self._preferred_retry_at = now + self.preferred_hold_s
            core.transfer_leadership(preferred)
            self.node._schedule()

    def _caught_up(self, pr) -> bool:
        # Not recent_active: check-quorum clears it every election timeout, so it would
        # say "not caught up" right after each round. A peer that stops answering leaves
        # Replicate (unreachable reports, rejections) or falls behind.
        lag = self.node.core.log.last_index() - pr.match
        return pr.state == ProgressState.Replicate and lag <= self.promote_lag_entries_max

    def best_transferee(self, candidates) -> str | None:
        """The most caught-up recently active voter among ``candidates`` (not us)."""
        core = self.node.core
        best, best_key = None, None
        for node in sorted(candidates):
            pr = core.tracker.progress.get(node)
            if node == self.node_id or pr is None or pr.is_learner:
                continue
            key = (pr.recent_active, pr.match)
            if best_key is None or key > best_key:
                best, best_key = node, key
        return best

    # -- leadership ----------------------------------------------------------------------

    def on_soft_state(self, role: Role, leader: str) -> None:
        """The node saw a role or leader change: finish transfers that reached it."""
        for waiter in list(self._transfers):
            if leader == waiter.target:
                self._end_transfer(waiter, OK)

    def transfer(self, target: str) -> defer.Deferred:
        """Move leadership to voter ``target`` (any node may ask); fires with OK once a
        node sees it lead, or with an error result after ``transfer_timeout_s``."""
        core = self.node.core
        if core.lead == target:
            return defer.succeed(OK)
        if core.role != Role.Leader and core.lead == NONE:
            return defer.fail(NoLeaderError())
        try:
            core.transfer_leadership(target)
        except ValueError as e:
            return defer.succeed(CommandError(f"ERR {e}"))
        self.node._schedule()
        waiter = _TransferWaiter(target, defer.Deferred())
        waiter.timer = self.node.reactor.callLater(self.transfer_timeout_s,
                                                   self._transfer_timed_out, waiter)
        self._transfers.append(waiter)
        return waiter.deferred

    def _transfer_timed_out(self, waiter: _TransferWaiter) -> None:
        waiter.timer = None
        self._end_transfer(waiter, CommandError(
            f"ERR leadership did not move to {waiter.target} within "
            f"{self.transfer_timeout_s:.1f}s (is it a caught-up voter, and reachable?); "
            "retry"))

    def _end_transfer(self, waiter: _TransferWaiter, result: object) -> None:
        if waiter in self._transfers:
            self._transfers.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        if not waiter.deferred.called:
            waiter.deferred.callback(result)

    def stop(self) -> None:
        """Fail everything still waiting (the node is stopping)."""
        for waiter in list(self._transfers):
            self._end_transfer(waiter, CommandError("ERR the node is shutting down"))
        for waiter in list(self._changes):
            self._end_change(waiter, OutcomeUnknownError(
                "the node is shutting down; check RAFT.MEMBERS for the outcome"))

    # -- admin commands ----------------------------------------------------------------

    def admin(self, command: list) -> defer.Deferred:
        """``RAFT.*`` commands (see kvraft.client.backend.IClientBackend.admin)."""
        name = bytes(command[0]).upper()
        args = [bytes(a).decode("utf-8", "replace") for a in command[1:]]
        handler = {
            b"RAFT.MEMBERS": self._members, b"RAFT.ADD": self._add,
            b"RAFT.PROMOTE": self._promote, b"RAFT.REMOVE": self._remove,
            b"RAFT.TRANSFER": self._transfer, b"RAFT.SNAPSHOT": self._snapshot,
        }.get(name)
        if handler is None:
            return defer.succeed(CommandError(
                f"ERR {name.decode(errors='replace')} is not a command of this node"))
        try:
            result = handler(args)
        except (NoLeaderError, OutcomeUnknownError) as e:
            return defer.fail(e)
        return result if isinstance(result, defer.Deferred) else defer.succeed(result)

    def _members(self, args: list[str]) -> list:
        core = self.node.core
        cs = core.tracker.conf_state()
        leading = core.role == Role.Leader
        last = core.log.last_index()
        rows = []
        for node in cs.members():
            if node in cs.voters:
                role = "voter"
            elif node in cs.voters_outgoing:
                role = "outgoing-voter"
            else:
                role = "learner"
            row: list = [b"id", node.encode(), b"address",
                         self.addresses.get(node, "").encode(), b"role", role.encode(),
                         b"leader", int(node == core.lead)]
            pr = core.tracker.progress.get(node) if leading else None
            if pr is not None:
                row += [b"match", pr.match, b"lag", max(0, last - pr.match),
                        b"state", pr.state.value.encode()]
            rows.append(row)
        return rows

    def _leader_only(self, what: str) -> CommandError | None:
        core = self.node.core
        if core.role == Role.Leader:
            return None
        if core.lead == NONE:
            raise NoLeaderError("no leader: the cluster is electing one; retry shortly")
        return CommandError(f"NOTLEADER {core.lead} membership changes run on the leader: "
                            f"send {what} to {core.lead}")

    def _change_pending(self) -> bool:
        return bool(self._changes) or self.node.core.tracker.is_joint()

    def _add(self, args: list[str]) -> object:
        if len(args) not in (2, 3):
            return CommandError("ERR usage: RAFT.ADD id host:port [learner|voter]")
        node, address = args[0], args[1]
        kind = args[2].lower() if len(args) == 3 else "learner"
        try:
            config_module.check_node_id(node, "id")
            parse_address(address)
        except ValueError as e:
            return CommandError(f"ERR {e}")
        if kind not in ("learner", "voter"):
            return CommandError(f"ERR RAFT.ADD: {args[2]!r} must be 'learner' or 'voter'")
        refused = self._leader_only("RAFT.ADD")
        if refused is not None:
            return refused
        cs = self.conf_state()
        if node in cs.members():
            role = "a voter" if node in cs.voters else "a learner"
            return CommandError(f"ERR {node} is already {role}; use RAFT.PROMOTE or "
                                "RAFT.REMOVE")
        change_type = ConfChangeType.AddLearner if kind == "learner" else \
            ConfChangeType.AddVoter
        return self._propose(ConfChange(
            changes=(ConfChangeSingle(change_type, node, address.encode()),),
            joint=kind == "voter"))

    def _promote(self, args: list[str]) -> object:
        if len(args) != 1:
            return CommandError("ERR usage: RAFT.PROMOTE id")
        node = args[0]
        refused = self._leader_only("RAFT.PROMOTE")
        if refused is not None:
            return refused
        core = self.node.core
        cs = core.tracker.conf_state()
        if node not in cs.learners:
            what = "a voter already" if node in cs.voters else "not a member"
            return CommandError(f"ERR {node} is {what}; only learners can be promoted")
        pr = core.tracker.progress[node]
        lag = core.log.last_index() - pr.match
        if not self._caught_up(pr):
            return CommandError(
                f"ERR {node} is not caught up: {lag} entries behind the leader (at most "
                f"{self.promote_lag_entries_max}), replication {pr.state.value}; retry "
                "once it has caught up")
        address = self.addresses.get(node, "").encode()
        return self._propose(ConfChange(
            changes=(ConfChangeSingle(ConfChangeType.AddVoter, node, address),), joint=True))

    def _remove(self, args: list[str]) -> object:
        if len(args) != 1:
            return CommandError("ERR usage: RAFT.REMOVE id")
        node = args[0]
        refused = self._leader_only("RAFT.REMOVE")
        if refused is not None:
            return refused
        cs = self.conf_state()
        if node not in cs.members():
            return CommandError(f"ERR {node} is not a member")
        voter = node in cs.voters
        if voter and set(cs.voters) == {node}:
            return CommandError(f"ERR {node} is the only voter; add another voter first")
        return self._propose(ConfChange(
            changes=(ConfChangeSingle(ConfChangeType.RemoveNode, node),), joint=voter))

    def _propose(self, cc: ConfChange) -> object:
        if self._change_pending():
            return CommandError(CHANGE_PENDING)
        core = self.node.core
        data = encode_conf_change(cc)
        try:
            core.propose_conf_change(cc)
        except ProposalDropped as e:
            if e.reason == "conf-change-pending":
                return CommandError(CHANGE_PENDING)
            if e.reason in ("no-leader", "transferring"):
                raise NoLeaderError(str(e)) from None
            return CommandError(f"ERR {e}")
        waiter = _ChangeWaiter(core.log.last_index(), data, defer.Deferred(), cc.joint)
        waiter.timer = self.node.reactor.callLater(change_timeout_s, self._change_timed_out,
                                                   waiter)
        self._changes.append(waiter)
        self.node._schedule()
        return waiter.deferred

    def _resolve_changes(self, index: int, data: bytes, cs: ConfState,
                         error: str | None) -> None:
        for waiter in list(self._changes):
            if waiter.index == index:
                if data != waiter.data:
                    self._end_change(waiter, CommandError(
                        "ERR the membership change was lost in a leader change; check "
                        "RAFT.MEMBERS and retry"))
                elif error is not None:
                    self._end_change(waiter, CommandError(f"ERR membership change refused: "
                                                          f"{error}"))
                elif waiter.joint and cs.is_joint() and self.node_id in cs.voters:
                    waiter.entered = True
                elif waiter.joint and cs.is_joint():
                    # This node is leaving: once C_old,new is committed, C_new follows
                    # (any leader finishes it), but the new leader stops talking to us
                    # as soon as it applies C_new, so we might never see it applied.
                    self._end_change(waiter, OK)
                else:
                    self._end_change(waiter, OK)
            elif waiter.entered and not cs.is_joint():
                self._end_change(waiter, OK)

    def _change_timed_out(self, waiter: _ChangeWaiter) -> None:
        waiter.timer = None
        self._end_change(waiter, OutcomeUnknownError(
            f"the membership change did not take effect within {change_timeout_s:.0f}s; "
            "check RAFT.MEMBERS before retrying"))

    def _end_change(self, waiter: _ChangeWaiter, result: object) -> None:
        if waiter in self._changes:
            self._changes.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        if waiter.deferred.called:
            return
        if isinstance(result, Exception):
            waiter.deferred.errback(result)
        else:
            waiter.deferred.callback(result)

    def _transfer(self, args: list[str]) -> object:
        if len(args) > 1:
            return CommandError("ERR usage: RAFT.TRANSFER [id]")
        core = self.node.core
        if args:
            return self.transfer(args[0])
        refused = self._leader_only("RAFT.TRANSFER")
        if refused is not None:
            return refused
        target = self.best_transferee(core.tracker.voter_ids())
        if target is None:
            return CommandError("ERR no other voter to transfer leadership to")
        return self.transfer(target)

    def _snapshot(self, args: list[str]) -> defer.Deferred:
        d = self.node.snapshotter.take()
        d.addCallbacks(lambda meta: meta.index if meta is not None else 0,
                       lambda failure: CommandError(
                           f"ERR snapshot failed: {failure.getErrorMessage()}"))
        return d
