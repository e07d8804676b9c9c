"""Mutual TLS for kvraft: context factories, peer identity checks, refusal reasons.

One cluster CA signs every node and client certificate (``kvraft.certs``). A
``TLSCredentials`` holds that CA, our certificate and our key, loaded from files, and
hands out Twisted connection creators:

* ``server_creator(require_client_cert=True)`` for listeners (the peer port, the client
  port): the client's certificate must chain to the cluster CA. Who the client *is* is
  checked afterwards: a peer names itself in its hello frame and the peer protocol checks
  the certificate against that name (``matches_node_id``); a client's identity for ACLs
  is its certificate's CN (``client_identity``).
* ``peer_client_creator(expected_node_id)`` for dialing a peer: the server's certificate
  must chain to the cluster CA *and* carry SAN ``DNS:<expected_node_id>`` (checked with
  ``service_identity`` during the handshake), so a node never talks to the wrong node.

Both sides present our certificate, speak TLS 1.2 or newer with forward-secret AEAD
ciphers, trust the cluster CA and nothing else, and keep no session cache (resuming a
session would skip verification, e.g. after the CA was rotated by ``reload()``).

A refused handshake is classified (``Refusal``) as one of ``REFUSAL_REASONS`` for a
counter and one log line; the verify callback records the exact X.509 error on the
connection because OpenSSL's own error after the fact only says "certificate verify
failed".

``reload()`` re-reads the three files and swaps the contexts atomically: connections
made afterwards use the new material, established ones keep theirs (SIGHUP rotation).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.python.failure import Failure
from zope.interface import implementer

NO_CERTIFICATE = "no certificate"
UNKNOWN_CA = "unknown CA"
EXPIRED = "expired"
WRONG_IDENTITY = "wrong identity"
HANDSHAKE_FAILED = "handshake failed"
REFUSAL_REASONS = (NO_CERTIFICATE, UNKNOWN_CA, EXPIRED, WRONG_IDENTITY, HANDSHAKE_FAILED)
"""Why a TLS peer was refused: stable words for a metric label and a log line."""

verify_depth_max = 2  # leaf + cluster CA; the CA signs leaves only (path_length=0)

# Forward secrecy and AEAD only. TLS 1.3 suites are OpenSSL's defaults (all AEAD).
_CIPHERS_TLS12 = b"ECDHE+AESGCM:ECDHE+CHACHA20"

# OpenSSL X509_V_ERR_* codes, grouped by the refusal they mean.
_VERIFY_ERRORS = {
    9: (EXPIRED, "certificate is not yet valid"),
    10: (EXPIRED, "certificate has expired"),
    2: (UNKNOWN_CA, "unable to get issuer certificate"),
    4: (UNKNOWN_CA, "unable to decrypt certificate signature"),
    7: (UNKNOWN_CA, "certificate signature failure"),
    18: (UNKNOWN_CA, "self-signed certificate"),
    19: (UNKNOWN_CA, "self-signed certificate in chain"),
    20: (UNKNOWN_CA, "unable to get local issuer certificate"),
    21: (UNKNOWN_CA, "unable to verify the first certificate"),
    24: (UNKNOWN_CA, "invalid CA certificate"),
    30: (UNKNOWN_CA, "authority and subject key identifier mismatch"),
    26: (WRONG_IDENTITY, "certificate not allowed for this purpose (extended key usage)"),
    62: (WRONG_IDENTITY, "hostname mismatch"),
}

# Fragments of OpenSSL error and alert texts, most specific first. Alerts are what the
# other side sent when *it* refused *us*.
_LOCAL_ERROR_TEXT = (
    ("did not return a certificate", NO_CERTIFICATE),
)
_ALERT_TEXT = (
    ("alert certificate required", NO_CERTIFICATE),
    ("alert handshake failure", HANDSHAKE_FAILED),
    ("alert certificate expired", EXPIRED),
    ("alert unknown ca", UNKNOWN_CA),
    ("alert bad certificate", WRONG_IDENTITY),
    ("alert certificate unknown", WRONG_IDENTITY),
    ("alert unsupported certificate", WRONG_IDENTITY),
    # OpenSSL sends "internal error" when a verify callback refuses a certificate that is
    # otherwise valid: that is our identity check on the other side refusing our name.
    ("alert internal error", WRONG_IDENTITY),
)


class TLSConfigError(Exception):
    """The CA, certificate or key files are unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class Refusal:
    """Why a TLS connection was refused.

    ``by_peer`` is False when we refused the other side (our verification failed) and
    True when the other side refused us (it sent an alert). ``detail`` is for the log.
    """

    reason: str
    by_peer: bool
    detail: str


class _VerifiedConnection(SSL.Connection):
    """An SSL connection that remembers which identity it must see and why it refused."""

    expected_identity: str | None = None
    refusal: str | None = None
    refusal_detail: str = ""


def _verify_callback(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                     ok: int) -> bool:
    # Called by OpenSSL once per certificate in the peer's chain, CA first. Never raise:
    # pyOpenSSL would turn an exception into a generic failure and lose the reason.
    if not ok:
        if getattr(conn, "refusal", None) is None:
            reason, detail = _VERIFY_ERRORS.get(
                errno, (HANDSHAKE_FAILED, f"X509 verify error {errno}"))
            conn.refusal, conn.refusal_detail = reason, f"{detail} (depth {depth})"
        return False
    expected = getattr(conn, "expected_identity", None)
    if depth == 0 and expected is not None:
        leaf = cert.to_cryptography()
        if not matches_node_id(leaf, expected):
            conn.refusal = WRONG_IDENTITY
            conn.refusal_detail = (f"expected node {expected!r}, certificate is for "
                                   f"{', '.join(certificate_names(leaf)) or 'no name'}")
            return False
    return True


class TLSCredentials:
    """The cluster CA, our certificate and our key, read from PEM files.

    ``ca_path`` may hold several CA certificates (old and new during a CA rotation).
    Construction and ``reload()`` raise ``TLSConfigError`` if a file is missing or
    unreadable, the key does not match the certificate, the certificate was not issued
    by the CA, or (unless ``check_validity=False``) the certificate is expired.
    """

    def __init__(self, ca_path: str | os.PathLike, cert_path: str | os.PathLike,
                 key_path: str | os.PathLike, *, check_validity: bool = True):
        self.ca_path = Path(ca_path)
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.check_validity = check_validity
        self.ca_certificates: list[x509.Certificate] = []
        self.certificate: x509.Certificate
        self._contexts: dict[str, SSL.Context] = {}
        self.reload()

    @property
    def identity(self) -> str | None:
        """Our certificate's CN (a node id or a client name)."""
        return client_identity(self.certificate)

    @property
    def not_valid_after(self) -> datetime.datetime:
        """When our certificate expires (UTC); worth a warning weeks ahead."""
        return self.certificate.not_valid_after_utc

    def reload(self) -> None:
        """Re-read the CA, certificate and key files. On any error the old material stays
        in use and ``TLSConfigError`` says what is wrong; on success, new connections use
        the new files and established connections are left alone."""
        cas = _load_certificates(self.ca_path, "CA certificate")
        chain = _load_certificates(self.cert_path, "certificate")
        cert = chain[0]
        key = _load_key(self.key_path)
        if key.public_key() != cert.public_key():
            raise TLSConfigError(
                f"{self.key_path} is not the key of {self.cert_path}: point tls.key at the "
                f"matching key, or re-issue both with `kvraft certs node`")
        if not any(_issued_by(cert, ca) for ca in cas):
            raise TLSConfigError(
                f"{self.cert_path} was not issued by the CA in {self.ca_path}: re-issue it "
                f"with `kvraft certs node` against that CA, or fix tls.ca")
        if self.check_validity:
            now = datetime.datetime.now(datetime.UTC)
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise TLSConfigError(
                    f"{self.cert_path} is valid only from {cert.not_valid_before_utc} to "
                    f"{cert.not_valid_after_utc}: re-issue it with `kvraft certs node`")
        contexts = {
            "server-require": self._build_context(cas, chain, key, "server", True),
            "server-optional": self._build_context(cas, chain, key, "server", False),
            "client": self._build_context(cas, chain, key, "client", True),
        }
        # Swap last, all at once: a failed reload changes nothing.
        self.ca_certificates, self.certificate, self._contexts = cas, cert, contexts

    def server_creator(self, require_client_cert: bool = True) -> ServerTLS:
        """A connection creator for a TLS listener (``TLSMemoryBIOFactory`` /
        ``SSL4ServerEndpoint``). With ``require_client_cert`` a client without a
        certificate from the cluster CA is refused during the handshake."""
        return ServerTLS(self, require_client_cert)

    def peer_client_creator(self, expected_node_id: str) -> PeerClientTLS:
        """A connection creator for dialing node ``expected_node_id``
        (``wrapClientTLS``): refuses a server that is not that node."""
        return PeerClientTLS(self, expected_node_id)

    def context(self, kind: str) -> SSL.Context:
        """The current OpenSSL context: ``"server-require"``, ``"server-optional"`` or
        ``"client"``. Read at each new connection, so ``reload()`` takes effect."""
        return self._contexts[kind]

    @staticmethod
    def _build_context(cas: list[x509.Certificate], chain: list[x509.Certificate], key,
                       side: str, require_peer_cert: bool) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_CIPHER_SERVER_PREFERENCE
        options |= getattr(SSL, "OP_NO_RENEGOTIATION", 0)
        ctx.set_options(options)
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle links keep no 32 KiB buffers
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_cipher_list(_CIPHERS_TLS12)
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.use_privatekey(key)
        ctx.check_privatekey()
        store = ctx.get_cert_store()
        for ca in cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
            if side == "server":
                ctx.add_client_ca(ca)  # tells clients which CA's certificate to present
        mode = SSL.VERIFY_PEER
        if side == "server" and require_peer_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE
        ctx.set_verify(mode, _verify_callback)
        ctx.set_verify_depth(verify_depth_max)
        return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Creates server-side TLS connections from the credentials' current context."""

    def __init__(self, credentials: TLSCredentials, require_client_cert: bool = True):
        self.credentials = credentials
        self.require_client_cert = require_client_cert

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        kind = "server-require" if self.require_client_cert else "server-optional"
        return _VerifiedConnection(self.credentials.context(kind), None)


@implementer(IOpenSSLClientConnectionCreator)
class PeerClientTLS:
    """Creates client-side TLS connections that accept only node ``expected_node_id``."""

    def __init__(self, credentials: TLSCredentials, expected_node_id: str):
        self.credentials = credentials
        self.expected_node_id = expected_node_id

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        conn = _VerifiedConnection(self.credentials.context("client"), None)
        conn.expected_identity = self.expected_node_id
        # SNI names the node we want; useful in packet captures and to a TLS proxy.
        conn.set_tlsext_host_name(self.expected_node_id.encode("ascii", "replace"))
        return conn


def server_context(ca: str | os.PathLike, cert: str | os.PathLike, key: str | os.PathLike,
                   require_client_cert: bool = True) -> ServerTLS:
    """A mutual-TLS server connection creator from three PEM files (see ``TLSCredentials``)."""
    return TLSCredentials(ca, cert, key).server_creator(require_client_cert)


def peer_client_context(ca: str | os.PathLike, cert: str | os.PathLike,
                        key: str | os.PathLike, expected_node_id: str) -> PeerClientTLS:
    """A connection creator that dials node ``expected_node_id`` over mutual TLS."""
    return TLSCredentials(ca, cert, key).peer_client_creator(expected_node_id)


# -- identities -----------------------------------------------------------------------------


def _as_cryptography(cert: x509.Certificate | crypto.X509) -> x509.Certificate:
    return cert.to_cryptography() if isinstance(cert, crypto.X509) else cert


def client_identity(cert: x509.Certificate | crypto.X509) -> str | None:
    """The certificate's subject CN (the identity client ACLs name), or None without one."""
    names = _as_cryptography(cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def certificate_names(cert: x509.Certificate | crypto.X509) -> list[str]:
    """The certificate's SAN DNS names (for log lines)."""
    try:
        san = _as_cryptography(cert).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.DNSName))


def matches_node_id(cert: x509.Certificate | crypto.X509, node_id: str) -> bool:
    """Whether the certificate is node ``node_id``'s: SAN ``DNS:<node_id>`` as
    ``service_identity`` matches it (RFC 6125, case-insensitive)."""
    try:
        verify_certificate_hostname(_as_cryptography(cert), node_id)
    except (VerificationError, CertificateError, ValueError, TypeError):
        return False
    return True


def peer_certificate(transport) -> x509.Certificate | None:
    """The verified certificate of the other side of a TLS ``transport``, or None."""
    conn = _connection_of(transport)
    if conn is None:
        return None
    return conn.get_peer_certificate(as_cryptography=True)


def classify_refusal(transport, reason: Failure | BaseException | None) -> Refusal:
    """Why the TLS connection on ``transport`` failed, from what our verify callback
    recorded or, failing that, from the OpenSSL error or alert in ``reason``.

    ``transport`` is the TLS transport or its ``getHandle()`` (an ``SSL.Connection``);
    Twisted drops the handle right after ``connectionLost``, so a protocol keeps it from
    ``connectionMade`` or classifies inside ``connectionLost``."""
    conn = _connection_of(transport)
    recorded = getattr(conn, "refusal", None)
    if recorded is not None:
        return Refusal(recorded, False, conn.refusal_detail)
    error = reason.value if isinstance(reason, Failure) else reason
    text = _error_text(error)
    lowered = text.lower()
    for fragment, why in _LOCAL_ERROR_TEXT:
        if fragment in lowered:
            return Refusal(why, False, text)
    for fragment, why in _ALERT_TEXT:
        if fragment in lowered:
            return Refusal(why, True, text)
    return Refusal(HANDSHAKE_FAILED, False, text or "connection closed during the handshake")


def is_tls_error(reason: Failure | BaseException | None) -> bool:
    """Whether ``reason`` is an OpenSSL error (as opposed to a plain connection loss)."""
    error = reason.value if isinstance(reason, Failure) else reason
    return isinstance(error, SSL.Error)


def _connection_of(transport) -> SSL.Connection | None:
    if isinstance(transport, SSL.Connection):
        return transport
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    handle = get_handle()
    return handle if isinstance(handle, SSL.Connection) else None


def _error_text(error: BaseException | None) -> str:
    if error is None:
        return ""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        parts = []
        for item in error.args[0]:
            parts.append(item[-1] if isinstance(item, tuple) and item else str(item))
        return "; ".join(str(p) for p in parts)
    return str(error)


# -- files ----------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read the {what} {path}: {e.strerror}; check the tls "
                             f"section of the config (`kvraft certs` creates these files)"
                             ) from e


def _load_certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError(f"{path} holds no valid PEM {what}: {e}") from e
    return certs


def _load_key(path: Path):
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigError(f"{path} holds no usable unencrypted PEM private key: {e}") from e


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
