"""Configuration validation: every mistake names its key and says what to do."""

import pytest

from kvraft import config
from kvraft.config import ConfigError

GOOD = """
[node]
id = "n1"
data_dir = "data/n1"
[cluster]
members = { n1 = "127.0.0.1:7001", n2 = "127.0.0.1:7002", n3 = "127.0.0.1:7003" }
[peer]
listen = "127.0.0.1:7001"
[client]
listen = "0.0.0.0:6379"
tls = true
plaintext_listen = "127.0.0.1:6479"
[http]
listen = "127.0.0.1:9101"
[tls]
ca = "ca.pem"
cert = "n1.pem"
key = "n1-key.pem"
[raft]
election_timeout_ms = 1000
heartbeat_interval_ms = 100
[storage]
backend = "wal"
[state_machine]
plugin = "kv"
"""


def load_text(tmp_path, text):
    path = tmp_path / "kvraft.toml"
    path.write_text(text)
    return config.load(path)


def test_the_documented_example_loads(tmp_path):
    c = load_text(tmp_path, GOOD)
    assert c.node_id == "n1"
    assert c.data_dir == tmp_path / "data/n1"
    assert set(c.members) == {"n1", "n2", "n3"}
    assert str(c.members["n2"]) == "127.0.0.1:7002"
    assert c.peers().keys() == {"n2", "n3"}
    assert c.client.listen.port == 6379 and c.client.tls
    assert c.client.plaintext_listen.port == 6479
    assert c.tls_ca == tmp_path / "ca.pem"
    assert c.raft.election_timeout_ms == 1000
    assert c.storage_backend == "wal" and c.state_machine_plugin == "kv"


def test_the_shipped_example_config_is_valid():
    from pathlib import Path
    example = Path(__file__).parent.parent / "etc" / "kvraft" / "kvraft.toml"
    c = config.load(example)
    assert c.node_id == "n1"


@pytest.mark.parametrize("change, message", [
    (("[node]\nid = \"n1\"\n", "[node]\nid = \"n 1\"\n"), "node.id"),
    (("data_dir = \"data/n1\"\n", ""), "node.data_dir: required key missing"),
    (("listen = \"127.0.0.1:7001\"", "listen = \"127.0.0.1\""), "peer.listen"),
    (("listen = \"127.0.0.1:7001\"", "listen = \"127.0.0.1:70000\""), "out of range"),
    (("tls = true\n", "tls = false\n"), "client.tls: plaintext clients are refused"),
    (("plaintext_listen = \"127.0.0.1:6479\"", "plaintext_listen = \"0.0.0.0:6479\""),
     "client.plaintext_listen"),
    (("election_timeout_ms = 1000", "election_timeout_ms = 200"), "at least 3x"),
    (("election_timeout_ms = 1000", "election_timeout_ms = \"fast\""),
     "raft.election_timeout_ms: expected int"),
    (("heartbeat_interval_ms = 100", "heartbeat_interval_ms = 0"), "greater than 0"),
    (("[storage]", "[storage]\nbakend = 1\n[nonsense]"), "unknown section"),
    (("n1 = \"127.0.0.1:7001\", ", ""), "this node ('n1') is not listed"),
    (("[http]\n", "[http]\nport = 1\n"), "[http]: unknown key(s) port"),
])
def test_mistakes_name_the_key(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, GOOD.replace(old, new, 1))
    assert message in str(e.value)


def test_plaintext_client_port_on_loopback_is_allowed(tmp_path):
    text = GOOD.replace('listen = "0.0.0.0:6379"\ntls = true',
                        'listen = "127.0.0.1:6379"\ntls = false')
    c = load_text(tmp_path, text)
    assert not c.client.tls


def test_join_does_not_need_to_be_listed(tmp_path):
    text = GOOD.replace("[cluster]\n", "[cluster]\njoin = true\n").replace(
        'n1 = "127.0.0.1:7001", ', "")
    assert load_text(tmp_path, text).join


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_text(tmp_path, "[node\n")
    with pytest.raises(ConfigError, match="cannot read configuration"):
        config.load(tmp_path / "missing.toml")


def test_acl_roles_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="acl.bob: role must be one of"):
        load_text(tmp_path, GOOD + "[acl]\nbob = \"root\"\n")
    assert load_text(tmp_path, GOOD + "[acl]\nbob = \"read\"\n").acl == {"bob": "read"}
