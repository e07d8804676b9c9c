"""kvraft.certs: the cluster CA, node and client certificates, and `kvraft certs`."""

import datetime
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvraft import certs


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def eku(cert):
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def ca_dir(tmp_path):
    certs.init_ca(tmp_path)
    return tmp_path


def test_init_ca_writes_a_ca_certificate_and_a_private_key(tmp_path):
    issued = certs.init_ca(tmp_path / "pki", name="test CA", days=30)
    assert issued.cert_path == tmp_path / "pki" / "ca.pem"
    assert stat.S_IMODE(issued.key_path.stat().st_mode) == 0o600
    cert = load(issued.cert_path)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test CA"
    assert cert.issuer == cert.subject
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=30) <= lifetime <= datetime.timedelta(days=30, minutes=10)
    ca_cert, ca_key = certs.load_ca(tmp_path / "pki")
    assert isinstance(ca_key.curve, ec.SECP256R1)
    assert ca_cert == cert


def test_init_ca_refuses_to_replace_a_ca_unless_forced(ca_dir):
    before = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(certs.CertError, match="already exists.*--force"):
        certs.init_ca(ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == before
    certs.init_ca(ca_dir, force=True)
    assert (ca_dir / "ca.pem").read_bytes() != before


def test_node_certificate_names_the_node_and_allows_both_tls_roles(ca_dir):
    issued = certs.issue_node(ca_dir, "n1", hosts=["db1.example.com", "10.0.0.5"])
    assert issued.cert_path.name == "n1.pem" and issued.key_path.name == "n1-key.pem"
    assert stat.S_IMODE(issued.key_path.stat().st_mode) == 0o600
    cert = load(issued.cert_path)
    names = sans(cert)
    assert names.get_values_for_type(x509.DNSName) == ["n1", "db1.example.com"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert localhost_absent(names)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_cert, _ = certs.load_ca(ca_dir)
    cert.verify_directly_issued_by(ca_cert)  # raises if not signed by the CA
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def localhost_absent(names):
    return "localhost" not in names.get_values_for_type(x509.DNSName)


def test_local_dev_adds_loopback_names_once(ca_dir):
    cert = load(certs.issue_node(ca_dir, "n2", hosts=["127.0.0.1"], local_dev=True).cert_path)
    names = sans(cert)
    assert names.get_values_for_type(x509.DNSName) == ["n2", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


def test_client_certificate_is_client_auth_only_with_its_name_as_cn(ca_dir):
    cert = load(certs.issue_client(ca_dir, "alice").cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_expired_certificate_and_out_dir(ca_dir, tmp_path):
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    issued = certs.issue_node(ca_dir, "n1", not_before=past,
                              not_after=past + datetime.timedelta(days=1),
                              out_dir=tmp_path / "expired")
    assert issued.cert_path == tmp_path / "expired" / "n1.pem"
    assert not (ca_dir / "n1.pem").exists()
    assert load(issued.cert_path).not_valid_after_utc < datetime.datetime.now(datetime.UTC)


def test_reissuing_a_node_replaces_its_certificate_and_key(ca_dir):
    first = certs.issue_node(ca_dir, "n1")
    key_before = first.key_path.read_bytes()
    certs.issue_node(ca_dir, "n1")
    assert first.key_path.read_bytes() != key_before
    assert not list(ca_dir.glob(".*.tmp"))


@pytest.mark.parametrize("bad", ["", "-n1", "n1-", "n 1", "n1/../x", "10.0.0.1", "ca",
                                 "x" * 64, "n1\n"])
def test_invalid_names_are_refused_with_the_rule(ca_dir, bad):
    with pytest.raises(certs.CertError, match="invalid node id"):
        certs.issue_node(ca_dir, bad)


def test_invalid_host_is_refused(ca_dir):
    with pytest.raises(certs.CertError, match="invalid host"):
        certs.issue_node(ca_dir, "n1", hosts=["bad host"])


def test_issuing_without_a_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(certs.CertError, match=r"no CA in .*kvraft certs init"):
        certs.issue_node(tmp_path, "n1")


def test_mismatched_ca_key_is_detected(ca_dir, tmp_path):
    certs.init_ca(tmp_path / "other")
    (ca_dir / "ca-key.pem").write_bytes((tmp_path / "other" / "ca-key.pem").read_bytes())
    with pytest.raises(certs.CertError, match="does not belong"):
        certs.issue_node(ca_dir, "n1")


def test_cli_init_node_client(tmp_path, capsys):
    pki = str(tmp_path / "pki")
    assert certs.main(["init", "--dir", pki]) == 0
    assert certs.main(["node", "n1", "--host", "db1.example", "--host", "10.1.2.3",
                       "--dir", pki]) == 0
    assert certs.main(["client", "admin", "--dir", pki, "--days", "7"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {pki}/ca.pem" in out
    assert f"wrote {pki}/n1.pem (node n1" in out
    assert "names: DNS:n1, DNS:db1.example, IP:10.1.2.3" in out
    assert f"wrote {pki}/admin-key.pem (private key, mode 0600)" in out
    admin = load(tmp_path / "pki" / "admin.pem")
    assert admin.not_valid_after_utc - admin.not_valid_before_utc < datetime.timedelta(days=8)


def test_cli_errors_are_clear_and_exit_nonzero(tmp_path, capsys):
    pki = str(tmp_path / "pki")
    assert certs.main(["node", "n1", "--dir", pki]) == 1
    err = capsys.readouterr().err
    assert f"no CA in {pki}: run `kvraft certs init --dir {pki}` first" in err
    assert certs.main(["init", "--dir", pki]) == 0
    assert certs.main(["init", "--dir", pki]) == 1
    assert "already exists" in capsys.readouterr().err
    assert certs.main(["node", "bad id", "--dir", pki]) == 1
    assert "invalid node id 'bad id'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        certs.main(["frobnicate"])
    assert exit_info.value.code == 2
