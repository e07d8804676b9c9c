"""kvraft.tls: mutual TLS creators, identity checks, refusal reasons, reload.

Handshakes run in memory (twisted.test.iosim pumps bytes between two TLS protocols and a
Clock drives Twisted's write coalescing), so every case is real OpenSSL and no sockets.
"""

import datetime
import shutil
from types import SimpleNamespace

import pytest
from OpenSSL import crypto
from twisted.internet import ssl as twisted_ssl
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer

from kvraft import certs, tls


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """One CA with nodes n1..n3 and client alice; an expired n2; another CA's n2."""
    base = tmp_path_factory.mktemp("tls-pki")
    main, other = base / "main", base / "other"
    certs.init_ca(main)
    certs.init_ca(other)
    for node in ("n1", "n2", "n3"):
        certs.issue_node(main, node, local_dev=True)
    certs.issue_client(main, "alice")
    certs.issue_node(other, "n2")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    certs.issue_node(main, "n2", not_before=past, not_after=past + datetime.timedelta(days=1),
                     out_dir=base / "expired")
    # Trusting both CAs lets a test client accept our server while presenting the other
    # CA's certificate: the server's refusal is what is under test.
    (base / "both-cas.pem").write_bytes((main / "ca.pem").read_bytes()
                                        + (other / "ca.pem").read_bytes())
    return SimpleNamespace(base=base, main=main, other=other, ca=main / "ca.pem")


def creds(pki, name, directory=None, ca=None, **kwargs):
    directory = directory or pki.main
    return tls.TLSCredentials(ca or pki.ca, directory / f"{name}.pem",
                              directory / f"{name}-key.pem", **kwargs)


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """Remembers the handshake, the SSL handle and how the connection ended."""

    def __init__(self):
        self.handshake_done = False
        self.lost = None
        self.refusal = None
        self.handle = None

    def connectionMade(self):
        self.handle = self.transport.getHandle()

    def handshakeCompleted(self):
        self.handshake_done = True

    def connectionLost(self, reason):
        self.lost = reason
        self.refusal = tls.classify_refusal(self.handle, reason)


def handshake(server_creator, client_creator):
    """Run a TLS handshake in memory; return (server Recorder, client Recorder)."""
    clock = Clock()
    server, client = Recorder(), Recorder()
    server_tls = TLSMemoryBIOFactory(server_creator, False,
                                     Factory.forProtocol(lambda: server), clock=clock)
    client_tls = TLSMemoryBIOFactory(client_creator, True,
                                     Factory.forProtocol(lambda: client), clock=clock)
    s, c = server_tls.buildProtocol(None), client_tls.buildProtocol(None)
    pump = iosim.connect(s, iosim.FakeTransport(s, True), c, iosim.FakeTransport(c, False),
                         greet=False, clock=clock)
    for _ in range(20):  # a handshake needs a few round trips; the rest is idle pumping
        pump.pump()
        clock.advance(0)
    return server, client


def test_mutual_handshake_and_identities(pki):
    server, client = handshake(creds(pki, "n1").server_creator(),
                               creds(pki, "n2").peer_client_creator("n1"))
    assert server.handshake_done and client.handshake_done
    assert server.lost is None and client.lost is None
    seen_by_server = tls.peer_certificate(server.handle)
    assert tls.client_identity(seen_by_server) == "n2"
    assert tls.matches_node_id(seen_by_server, "n2")
    assert not tls.matches_node_id(seen_by_server, "n3")
    assert tls.client_identity(tls.peer_certificate(client.handle)) == "n1"
    assert server.handle.get_protocol_version_name() in ("TLSv1.2", "TLSv1.3")


def test_client_refuses_a_server_that_is_not_the_node_it_dialed(pki):
    server, client = handshake(creds(pki, "n1").server_creator(),
                               creds(pki, "n2").peer_client_creator("n3"))
    assert client.refusal.reason == tls.WRONG_IDENTITY and not client.refusal.by_peer
    assert "expected node 'n3'" in client.refusal.detail and "n1" in client.refusal.detail
    assert not server.handshake_done
    assert server.refusal.by_peer  # n1 learns its peer refused it


def test_server_refuses_a_certificate_from_another_ca(pki):
    intruder = creds(pki, "n2", pki.other, ca=pki.base / "both-cas.pem")
    server, client = handshake(creds(pki, "n1").server_creator(),
                               intruder.peer_client_creator("n1"))
    assert server.refusal.reason == tls.UNKNOWN_CA and not server.refusal.by_peer
    assert not server.handshake_done
    assert client.refusal.reason == tls.UNKNOWN_CA and client.refusal.by_peer


def test_client_refuses_a_server_from_another_ca(pki):
    intruder = creds(pki, "n2", pki.other, ca=pki.base / "both-cas.pem")
    server, client = handshake(intruder.server_creator(),
                               creds(pki, "n1").peer_client_creator("n2"))
    assert client.refusal.reason == tls.UNKNOWN_CA and not client.refusal.by_peer


def test_server_refuses_an_expired_certificate(pki):
    expired = creds(pki, "n2", pki.base / "expired", check_validity=False)
    server, client = handshake(creds(pki, "n1").server_creator(),
                               expired.peer_client_creator("n1"))
    assert server.refusal.reason == tls.EXPIRED and not server.refusal.by_peer
    assert "expired" in server.refusal.detail
    assert client.refusal.reason == tls.EXPIRED and client.refusal.by_peer


def test_server_refuses_a_client_without_certificate(pki):
    anonymous = twisted_ssl.optionsForClientTLS(
        "n1", trustRoot=twisted_ssl.Certificate.loadPEM(pki.ca.read_bytes()))
    server, client = handshake(creds(pki, "n1").server_creator(), anonymous)
    assert server.refusal.reason == tls.NO_CERTIFICATE and not server.refusal.by_peer
    assert client.refusal.reason == tls.NO_CERTIFICATE and client.refusal.by_peer


def test_optional_client_certificate_lets_an_anonymous_client_in(pki):
    anonymous = twisted_ssl.optionsForClientTLS(
        "n1", trustRoot=twisted_ssl.Certificate.loadPEM(pki.ca.read_bytes()))
    server, client = handshake(creds(pki, "n1").server_creator(require_client_cert=False),
                               anonymous)
    assert server.handshake_done and server.lost is None
    assert tls.peer_certificate(server.handle) is None


def test_client_only_certificate_cannot_serve_as_a_node(pki):
    # alice's certificate has clientAuth only: OpenSSL's purpose check refuses it.
    server, client = handshake(creds(pki, "alice").server_creator(),
                               creds(pki, "n1").peer_client_creator("alice"))
    assert client.refusal.reason == tls.WRONG_IDENTITY
    assert "purpose" in client.refusal.detail


def test_client_identity_is_the_cn(pki):
    alice = creds(pki, "alice")
    assert alice.identity == "alice"
    assert tls.client_identity(crypto.X509.from_cryptography(alice.certificate)) == "alice"
    assert tls.certificate_names(alice.certificate) == []
    assert tls.certificate_names(creds(pki, "n1").certificate)[:2] == ["n1", "localhost"]


def test_handshake_failure_without_a_recorded_reason(pki):
    refusal = tls.classify_refusal(None, ConnectionResetError("reset by peer"))
    assert refusal == tls.Refusal(tls.HANDSHAKE_FAILED, False, "reset by peer")
    assert not tls.is_tls_error(ConnectionResetError())


def test_bad_files_are_reported_with_the_path_and_the_fix(pki, tmp_path):
    with pytest.raises(tls.TLSConfigError, match=r"cannot read the certificate .*nope.pem"):
        tls.TLSCredentials(pki.ca, tmp_path / "nope.pem", pki.main / "n1-key.pem")
    with pytest.raises(tls.TLSConfigError, match="is not the key of"):
        tls.TLSCredentials(pki.ca, pki.main / "n1.pem", pki.main / "n2-key.pem")
    with pytest.raises(tls.TLSConfigError, match="was not issued by the CA"):
        tls.TLSCredentials(pki.ca, pki.other / "n2.pem", pki.other / "n2-key.pem")
    with pytest.raises(tls.TLSConfigError, match="is valid only from"):
        creds(pki, "n2", pki.base / "expired")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(tls.TLSConfigError, match="no valid PEM"):
        tls.TLSCredentials(pki.ca, garbage, pki.main / "n1-key.pem")


def test_reload_rotates_the_certificate_for_new_connections(pki, tmp_path):
    node_dir = tmp_path / "n1"
    node_dir.mkdir()
    for name in ("n1.pem", "n1-key.pem"):
        shutil.copy(pki.main / name, node_dir / name)
    n1 = creds(pki, "n1", node_dir)
    server_creator = n1.server_creator()  # made before the rotation, used after it
    old_serial = n1.certificate.serial_number

    certs.issue_node(pki.main, "n1", out_dir=node_dir)  # new key and certificate
    n1.reload()
    assert n1.certificate.serial_number != old_serial
    server, client = handshake(server_creator, creds(pki, "n2").peer_client_creator("n1"))
    assert client.handshake_done and client.lost is None
    assert tls.peer_certificate(client.handle).serial_number == n1.certificate.serial_number


def test_failed_reload_keeps_the_old_material(pki, tmp_path):
    node_dir = tmp_path / "n1"
    node_dir.mkdir()
    for name in ("n1.pem", "n1-key.pem"):
        shutil.copy(pki.main / name, node_dir / name)
    n1 = creds(pki, "n1", node_dir)
    serial = n1.certificate.serial_number
    shutil.copy(pki.main / "n2-key.pem", node_dir / "n1-key.pem")  # a botched rotation
    with pytest.raises(tls.TLSConfigError, match="is not the key of"):
        n1.reload()
    assert n1.certificate.serial_number == serial
    server, client = handshake(n1.server_creator(), creds(pki, "n2").peer_client_creator("n1"))
    assert server.handshake_done and server.lost is None


def test_convenience_constructors(pki):
    server = tls.server_context(pki.ca, pki.main / "n1.pem", pki.main / "n1-key.pem")
    client = tls.peer_client_context(pki.ca, pki.main / "n2.pem", pki.main / "n2-key.pem",
                                     expected_node_id="n1")
    assert server.require_client_cert and client.expected_node_id == "n1"
    s, c = handshake(server, client)
    assert s.handshake_done and c.handshake_done
