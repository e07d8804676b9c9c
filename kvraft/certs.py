"""Certificate tooling for a kvraft cluster: one CA, node certificates, client certificates.

``kvraft certs init`` creates the cluster CA; ``kvraft certs node n1 --host db1.example``
issues a node certificate; ``kvraft certs client alice`` issues a client certificate.

Files in the certificate directory (``--dir``, default ``./certs``)::

    ca.pem, ca-key.pem           the cluster CA (the key is mode 0600: keep it offline)
    <node id>.pem, <id>-key.pem  a node: SAN DNS:<id> plus its host names and IPs,
                                 serverAuth + clientAuth (it dials and accepts peer links)
    <name>.pem, <name>-key.pem   a client: CN=<name> (its ACL identity), clientAuth only

Keys are ECDSA P-256: small, and a handshake costs a fraction of an RSA one. Every
file is written to a temporary name, fsynced and renamed, so a crash never leaves a
half-written certificate; keys are created with mode 0600 from the first byte.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_NAME_DEFAULT = "kvraft cluster CA"
CERTS_DIR_DEFAULT = "certs"

ca_days_default = 3650  # ten years: rotating a CA means touching every node
node_days_default = 825  # the CA/Browser Forum's old ceiling; rotate with `certs node`
client_days_default = 825
clock_skew_s = 300  # not_before is backdated so a peer whose clock is behind still accepts

name_chars_max = 63  # one DNS label: the node id is also the certificate's SAN DNS name
LOCAL_DEV_HOSTS = ("localhost", "127.0.0.1", "::1")

_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_RESERVED_NAMES = {"ca"}  # ca.pem is the CA; a node or client called "ca" would clobber it


class CertError(Exception):
    """A certificate operation cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class Issued:
    """Where a certificate and its private key were written."""

    cert_path: Path
    key_path: Path


def validate_name(name: str, what: str = "node id") -> str:
    """Return ``name`` if it can be a node id / client name and a SAN DNS name, else raise
    ``CertError`` saying what is allowed."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > name_chars_max:
        raise CertError(
            f"invalid {what} {name!r}: use 1 to {name_chars_max} letters, digits, '-', '_' "
            f"or '.', starting and ending with a letter or digit (e.g. n1)")
    if _looks_like_ip(name):
        raise CertError(f"invalid {what} {name!r}: it must not look like an IP address")
    if name.lower() in _RESERVED_NAMES:
        raise CertError(f"invalid {what} {name!r}: {name!r} is reserved for the CA files")
    return name


def init_ca(directory: str | os.PathLike, name: str = CA_NAME_DEFAULT,
            days: int = ca_days_default, *, force: bool = False) -> Issued:
    """Create a cluster CA in ``directory``: ``ca.pem`` and ``ca-key.pem`` (mode 0600).

    Refuses to replace an existing CA unless ``force``: every certificate it issued would
    stop being trusted by nodes that load the new one.
    """
    _check_days(days)
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not force and (cert_path.exists() or key_path.exists()):
        raise CertError(
            f"a CA already exists in {directory} ({CA_CERT_FILE}); replacing it would "
            f"invalidate every certificate it issued. Remove it first, or pass --force")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _validity(days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # path_length=0: this CA signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert_path, key_path, cert, key)
    return Issued(cert_path, key_path)


def issue_node(directory: str | os.PathLike, node_id: str, hosts: Iterable[str] = (),
               days: int = node_days_default, *, local_dev: bool = False,
               not_before: datetime.datetime | None = None,
               not_after: datetime.datetime | None = None,
               out_dir: str | os.PathLike | None = None) -> Issued:
    """Issue ``<node_id>.pem`` / ``<node_id>-key.pem`` signed by the CA in ``directory``.

    The certificate has CN=<node_id> and SAN DNS:<node_id> (what peers verify), plus one
    SAN per entry of ``hosts`` (an IP address becomes an IP SAN, anything else a DNS SAN)
    so clients can verify the node by its real address; ``local_dev`` adds localhost,
    127.0.0.1 and ::1. ``not_before``/``not_after`` override ``days`` (tests use them to
    make expired certificates). The files go to ``out_dir`` (default: ``directory``).
    Replaces an existing certificate for the same node: that is how a node certificate
    is rotated.
    """
    validate_name(node_id, "node id")
    sans: list[x509.GeneralName] = [x509.DNSName(node_id)]
    for host in [*hosts, *(LOCAL_DEV_HOSTS if local_dev else ())]:
        san = _host_san(host)
        if san not in sans:
            sans.append(san)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue_leaf(Path(directory), node_id, sans, usages, days, not_before, not_after,
                       out_dir)


def issue_client(directory: str | os.PathLike, name: str, days: int = client_days_default, *,
                 not_before: datetime.datetime | None = None,
                 not_after: datetime.datetime | None = None,
                 out_dir: str | os.PathLike | None = None) -> Issued:
    """Issue ``<name>.pem`` / ``<name>-key.pem`` for a client whose identity (the CN, which
    the ACL names) is ``name``. clientAuth only: it cannot pose as a node's server side.
    Other parameters as for ``issue_node``."""
    validate_name(name, "client name")
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue_leaf(Path(directory), name, [], usages, days, not_before, not_after,
                       out_dir)


def load_ca(directory: str | os.PathLike) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key in ``directory``, or ``CertError`` saying how to make one."""
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        raise CertError(f"no CA in {directory}: run `kvraft certs init --dir {directory}` first")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise CertError(f"cannot read the CA in {directory}: {e}; re-create it with "
                        f"`kvraft certs init --force` (and re-issue every certificate)") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertError(f"{key_path} does not belong to {cert_path}: restore the matching "
                        f"pair, or re-create the CA with `kvraft certs init --force`")
    return cert, key


# -- internals ------------------------------------------------------------------------------


def _issue_leaf(directory: Path, name: str, sans: list[x509.GeneralName],
                usages: list[x509.ObjectIdentifier], days: int,
                not_before: datetime.datetime | None,
                not_after: datetime.datetime | None,
                out_dir: str | os.PathLike | None) -> Issued:
    ca_cert, ca_key = load_ca(directory)
    _check_days(days)
    default_before, default_after = _validity(days)
    not_before = not_before or default_before
    not_after = not_after or default_after
    if not_after <= not_before:
        raise CertError(f"not_after ({not_after}) must be later than not_before ({not_before})")
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out = Path(out_dir) if out_dir is not None else directory
    out.mkdir(parents=True, exist_ok=True)
    issued = Issued(out / f"{name}.pem", out / f"{name}-key.pem")
    _write_pair(issued.cert_path, issued.key_path, cert, key)
    return issued


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(seconds=clock_skew_s), now + datetime.timedelta(days=days)


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days < 1:
        raise CertError(f"days must be a whole number of at least 1, got {days!r}")


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_san(host: str) -> x509.GeneralName:
    host = host.strip().strip("[]")
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or not re.fullmatch(r"^[A-Za-z0-9*]([A-Za-z0-9_.-]*[A-Za-z0-9])?$", host):
        raise CertError(f"invalid host {host!r}: give a DNS name (db1.example.com) or an IP "
                        f"address (10.0.0.5)")
    return x509.DNSName(host)


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate,
                key: ec.EllipticCurvePrivateKey) -> None:
    # The key first: a certificate without its key is useless, a key without a new
    # certificate is merely an unfinished rotation that re-running the command fixes.
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_atomic(key_path, key_pem, mode=0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode does not apply to a leftover temporary file
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvraft certs", description="Create the cluster CA and node/client certificates.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{init,node,client}")

    def common(p: argparse.ArgumentParser, days: int) -> None:
        p.add_argument("--dir", default=CERTS_DIR_DEFAULT,
                       help=f"certificate directory (default ./{CERTS_DIR_DEFAULT})")
        p.add_argument("--days", type=int, default=days,
                       help=f"validity in days (default {days})")

    def out(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", default=None, metavar="D",
                       help="write the certificate and key to D instead of --dir")

    p = sub.add_parser("init", help="create the cluster CA (ca.pem, ca-key.pem)")
    common(p, ca_days_default)
    p.add_argument("--name", default=CA_NAME_DEFAULT, help="the CA's common name")
    p.add_argument("--force", action="store_true",
                   help="replace an existing CA (every issued certificate stops working)")

    p = sub.add_parser("node", help="issue a node certificate (ID.pem, ID-key.pem)")
    p.add_argument("node_id", metavar="ID", help="the node id, e.g. n1")
    p.add_argument("--host", action="append", default=[], metavar="H",
                   help="a DNS name or IP address clients use for this node (repeatable)")
    p.add_argument("--local-dev", action="store_true",
                   help="also add localhost, 127.0.0.1 and ::1")
    common(p, node_days_default)
    out(p)

    p = sub.add_parser("client", help="issue a client certificate (NAME.pem, NAME-key.pem)")
    p.add_argument("name", metavar="NAME", help="the client identity (its CN) the ACL names")
    common(p, client_days_default)
    out(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``kvraft certs init|node ID [--host H ...]|client NAME [--dir D]``; returns the exit
    status (0 done, 1 refused with a message on stderr, 2 bad usage)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "init":
            issued = init_ca(args.dir, args.name, args.days, force=args.force)
            what = f"CA {args.name!r}"
        elif args.command == "node":
            issued = issue_node(args.dir, args.node_id, args.host, args.days,
                                local_dev=args.local_dev, out_dir=args.out)
            what = f"node {args.node_id}"
        else:
            issued = issue_client(args.dir, args.name, args.days, out_dir=args.out)
            what = f"client {args.name}"
    except CertError as e:
        print(f"kvraft certs: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"kvraft certs: cannot write to {args.dir}: {e.strerror} ({e.filename})",
              file=sys.stderr)
        return 1
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    print(f"wrote {issued.cert_path} ({what}, valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%d})")
    print(f"wrote {issued.key_path} (private key, mode 0600)")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        print("  names: " + ", ".join(_describe_san(n) for n in names))
    except x509.ExtensionNotFound:
        pass
    return 0


def _describe_san(name: x509.GeneralName) -> str:
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    return f"DNS:{name.value}"


if __name__ == "__main__":
    sys.exit(main())
