"""``twistd kvraft``: Options and makeService.

The service tree (each child named, so operators and tests can find them)::

    kvraft (MultiService)
    ├── raft-node          RaftNodeService: the core, storage, state machine
    ├── peer-listener      mutual-TLS listener for peer links
    ├── peers              one reconnecting ClientService per peer
    ├── client-listener    the Redis-compatible port (mutual TLS by default)
    ├── client-plaintext   optional loopback plaintext port (telnet, local tools)
    ├── http               /health, /status, /metrics and the dashboard (kvraft.http)
    ├── status-tracker     rates, history and events for /status (kvraft.web.tracker)
    └── sd-notify          READY=1 / WATCHDOG=1 / STOPPING=1 for systemd

The root (``kvraft.lifecycle.NodeRoot``) hands leadership over before its children stop,
and installs the node's log observer (``kvraft.logs``).
"""

from __future__ import annotations

import signal

from twisted.application import service, strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from kvraft import config as config_module

log = Logger(namespace="kvraft.tap")


class Options(usage.Options):
    """Command-line options of ``twistd kvraft``."""

    synopsis = "--config PATH"
    longdesc = ("Run one kvraft node. Everything else is in the TOML configuration file; "
                "see etc/kvraft/kvraft.toml for every key.")
    optParameters = [
        ["config", "c", "/etc/kvraft/kvraft.toml", "Path of the node's TOML configuration."],
    ]
    optFlags = [
        ["join", None, "Join an existing cluster (as cluster.join = true): start with no "
         "configuration and wait to be added with `kvraft member add`. Ignored once the "
         "node has state."],
    ]

    def postOptions(self):
        try:
            self["loaded"] = config_module.load(self["config"], join=bool(self["join"]))
        except config_module.ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None


def _tcp_endpoint(reactor, address) -> str:
    host = address.host.replace(":", r"\:")
    return f"tcp:{address.port}:interface={host}"


def _open_storage(config):
    from kvraft.plugins import find_storage_backend
    from kvraft.storage.errors import StorageError
    try:
        backend = find_storage_backend(config.storage_backend)
    except ValueError as e:
        raise usage.UsageError(f"storage.backend: {e}") from None
    try:
        return backend.open(str(config.data_dir), dict(config.storage_options))
    except (StorageError, ValueError) as e:
        raise usage.UsageError(f"storage error: {e}") from None


def _create_machine(config):
    from kvraft.plugins import find_state_machine_plugin
    try:
        plugin = find_state_machine_plugin(config.state_machine_plugin)
        return plugin.create(dict(config.state_machine_options))
    except ValueError as e:
        raise usage.UsageError(f"state_machine: {e}") from None


def make_node_services(config, reactor=None, twistd_options=None) -> service.MultiService:
    """Build the node's service tree from a validated ``kvraft.config.Config``;
    ``twistd_options`` (twistd's own, for --logfile) lets it set up logging."""
    from twisted.internet import reactor as default_reactor

    from kvraft import acl, http, logs, metrics, tls
    from kvraft.client.server import ClientFactory, ClientLimits
    from kvraft.lifecycle import NodeRoot
    from kvraft.node import RaftNodeService
    from kvraft.peer.transport import PeerTransport
    from kvraft.sdnotify import NotifyService
    from kvraft.web.collector import NodeCollector, make_registry
    from kvraft.web.tracker import ClusterTracker

    reactor = reactor or default_reactor
    logs.CONTEXT.node_id = config.node_id
    root = NodeRoot(clock=reactor, handoff_timeout_s=2 * config.raft.election_timeout_ms / 1000,
                    log_format=config.log_format, twistd_options=twistd_options)
    try:
        credentials = tls.TLSCredentials(config.tls_ca, config.tls_cert, config.tls_key)
    except tls.TLSConfigError as e:
        raise usage.UsageError(f"tls: {e}") from None
    storage = _open_storage(config)
    machine = _create_machine(config)
    peers = {k: (v.host, v.port) for k, v in config.peers().items()}
    try:
        transport = PeerTransport(config.node_id, peers, credentials, on_message=None,
                                  reactor=reactor, cluster=config.cluster_name)
    except ValueError as e:
        raise usage.UsageError(f"tls.cert: {e}") from None
    node = RaftNodeService(config, storage, machine, transport, reactor=reactor)
    transport.on_unreachable = node.report_unreachable
    transport.on_snapshot_status = node.report_snapshot
    node.setServiceParent(root)
    root.node = logs.CONTEXT.node = node
    node.listeners.append(node.metrics.on_node_event)
    commands = metrics.CommandMetrics()
    metered = metrics.MeteredBackend(node, commands)
    client_factories = {}
    client_tls = None

    listener = transport.listener_service(config.peer_listen)
    listener.setName("peer-listener")
    listener.setServiceParent(root)
    transport.service.setServiceParent(root)

    limits = ClientLimits.from_settings(config.client)

    def identify(protocol):
        cert = tls.peer_certificate(protocol.transport)
        return tls.client_identity(cert) if cert is not None else None

    if config.client.listen is not None:
        factory = ClientFactory(metered, limits, clock=reactor, identify=identify,
                                acl=acl.build_acl(config.acl, plaintext=not config.client.tls,
                                                  denied=commands.denied))
        client_factories["client"] = factory
        wrapped = factory
        if config.client.tls:
            wrapped = client_tls = metrics.CountingTLSFactory(
                credentials.server_creator(require_client_cert=True), False, factory,
                clock=reactor)
        endpoint = endpoints.serverFromString(reactor, _tcp_endpoint(reactor, config.client.listen))
        client_service = StreamServerEndpointService(endpoint, wrapped)
        client_service.setName("client-listener")
        client_service.setServiceParent(root)
    if config.client.plaintext_listen is not None:
        plain = ClientFactory(metered, limits, clock=reactor,
                              acl=acl.build_acl(config.acl, plaintext=True,
                                                denied=commands.denied))
        client_factories["plaintext"] = plain
        endpoint = endpoints.serverFromString(
            reactor, _tcp_endpoint(reactor, config.client.plaintext_listen))
        plain_service = StreamServerEndpointService(endpoint, plain)
        plain_service.setName("client-plaintext")
        plain_service.setServiceParent(root)
    tracker = ClusterTracker(node, transport, clock=reactor)
    tracker.setServiceParent(root)
    registry = make_registry([NodeCollector(node, transport, client_factories, commands,
                                            client_tls)])
    if config.http_listen is not None:
        site = http.make_site(node, tracker, registry, transport, clock=reactor)
        web = strports.service(_tcp_endpoint(reactor, config.http_listen), site)
        web.setName("http")
        web.setServiceParent(root)

    notifier = NotifyService(is_healthy=lambda: node.running)
    notifier.setServiceParent(root)
    reactor.callWhenRunning(notifier.ready, f"node {config.node_id} serving")

    def reload_certificates(*_):
        try:
            credentials.reload()
            log.info("reloaded TLS certificates from {cert}", cert=str(config.tls_cert))
        except tls.TLSConfigError as e:
            log.error("certificate reload failed, keeping the old ones: {error}", error=str(e))

    if hasattr(signal, "SIGHUP"):
        reactor.callWhenRunning(
            signal.signal, signal.SIGHUP,
            lambda *a: reactor.callFromThread(reload_certificates))
    root.storage = storage
    root.node = node
    root.transport = transport
    root.registry = registry
    root.tracker = tracker
    return root


def makeService(options) -> service.MultiService:
    """twistd's hook: the node's service tree, on ``kvraft.reactor.KvraftReactor`` unless
    twistd's ``--reactor`` chose another."""
    from kvraft import reactor as kvraft_reactor
    kvraft_reactor.install_unless_chosen()
    return make_node_services(options["loaded"], twistd_options=getattr(options, "parent", None))
