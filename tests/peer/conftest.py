"""Fixtures for the peer transport tests: one PKI per session (certificates are cheap
with ECDSA, but there is no reason to make them per test)."""

import datetime
from types import SimpleNamespace

import pytest

from kvraft import certs, tls


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """CA ``main`` with nodes n1..n3 and client alice; an expired n2 (``expired/``);
    another CA's n2 (``other/``); ``both-cas.pem`` trusting both CAs."""
    base = tmp_path_factory.mktemp("peer-pki")
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
    (base / "both-cas.pem").write_bytes((main / "ca.pem").read_bytes()
                                        + (other / "ca.pem").read_bytes())

    def credentials(name, directory=None, ca=None, **kwargs):
        directory = directory or main
        return tls.TLSCredentials(ca or main / "ca.pem", directory / f"{name}.pem",
                                  directory / f"{name}-key.pem", **kwargs)

    return SimpleNamespace(base=base, main=main, other=other, ca=main / "ca.pem",
                           credentials=credentials)
