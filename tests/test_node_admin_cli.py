"""The `kvraft member|leader|snapshot` tools' pieces that need no cluster (the process
tests in tests/integration/test_membership_processes.py run them for real)."""

import argparse

import pytest

from kvraft import cli
from kvraft.admin import Admin, AdminError, members_table
from kvraft.admin import member as member_cli


def test_members_table_aligns_the_raft_members_rows():
    rows = [[b"id", b"n1", b"address", b"10.0.0.1:7001", b"role", b"voter", b"leader", 1,
             b"match", 42, b"lag", 0, b"state", b"replicate"],
            [b"id", b"n4", b"address", b"10.0.0.4:7001", b"role", b"learner", b"leader", 0,
             b"match", 30, b"lag", 12, b"state", b"probe"]]
    lines = members_table(rows).splitlines()
    assert lines[0].split() == ["id", "address", "role", "leader", "match", "lag", "state"]
    assert lines[1].split() == ["n1", "10.0.0.1:7001", "voter", "*", "42", "0", "replicate"]
    assert lines[2].split() == ["n4", "10.0.0.4:7001", "learner", "30", "12", "probe"]
    assert lines[1].index("10.0.0.1") == lines[0].index("address")


def test_tls_needs_the_three_files():
    args = argparse.Namespace(node=None, timeout=1.0, tls=True, cacert="ca.pem", cert=None,
                              key=None)
    with pytest.raises(AdminError, match="--cacert, --cert and --key"):
        Admin(args)


def test_unreachable_nodes_give_an_operator_error(capsys, monkeypatch):
    monkeypatch.setattr("kvraft.admin.leader_attempts_max", 1)
    status = member_cli.main(["list", "--node", "127.0.0.1:1", "--timeout", "0.5"])
    assert status == 1
    assert "no leader among 127.0.0.1:1" in capsys.readouterr().err


def test_the_tools_are_kvraft_subcommands():
    for name in ("member", "leader", "snapshot"):
        assert name in cli.SUBCOMMANDS
        assert name in cli.usage()
