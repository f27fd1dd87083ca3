"""agent.toml: a valid file loads with its defaults; anything unknown or out of range is refused, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapport.agent.certs import Role
from snapport.agent.config import AgentConfig, load_config, parse_address, parse_config, render_config
from snapport.errors import ConfigError, ObjectNotFound, UsageError

MINIMAL = 'host = "systemtwo"\nrole = "proxy"\n'


def test_a_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = parse_config(MINIMAL)
    assert (config.host, config.role) == ("systemtwo", Role.PROXY)
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8443)
    assert (config.max_jobs, config.lease_default_s, config.max_request_bytes) == (2, 3600.0, 1 << 20)
    assert config.cert_path(tmp_path) == tmp_path / "certs" / "systemtwo.crt"
    assert config.key_path(tmp_path) == tmp_path / "certs" / "systemtwo.key"
    assert config.ca_path(tmp_path) == tmp_path / "certs" / "ca.crt"
    assert parse_config(MINIMAL + 'cert = "/etc/snapport/me.crt"\n').cert_path(tmp_path) == Path("/etc/snapport/me.crt")


def test_a_full_file_round_trips_through_render() -> None:
    config = parse_config(
        MINIMAL
        + 'listen_host = "198.18.0.2"\nlisten_port = 0\nmax_jobs = 4\nlease_default_s = 600\n'
        + '[[peers]]\nname = "systemone"\naddress = "198.18.0.1:8443"\nrole = "production"\n'
    )
    assert config.peer("SYSTEMONE").address == "198.18.0.1:8443"
    assert parse_config(render_config(config)) == config
    with pytest.raises(ObjectNotFound):
        config.peer("systemthree")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("colour = 1\n", "colour: unknown key"),
        ('listen_host = "localhost"\n', "listen_host: 'localhost' is not an IP address"),
        ("listen_port = 70000\n", "listen_port: Input should be less than or equal to 65535"),
        ("max_jobs = 0\n", "max_jobs: Input should be greater than or equal to 1"),
        ("lease_default_s = -1\n", "lease_default_s: Input should be greater than 0"),
        ('[[peers]]\nname = "a"\naddress = "a:1"\nrole = "proxy"\nbogus = 1\n', "peers.0.bogus: unknown key"),
        ('[[peers]]\nname = "a"\naddress = "a"\nrole = "proxy"\n', "peers.0.address: 'a' is not an agent address"),
        ('[[peers]]\nname = "systemtwo"\naddress = "a:1"\nrole = "proxy"\n', "peer systemtwo is this host"),
        (
            '[[peers]]\nname = "a"\naddress = "a:1"\nrole = "proxy"\n[[peers]]\nname = "A"\naddress = "b:1"\n'
            'role = "proxy"\n',
            "two peers have the same name",
        ),
    ],
)
def test_bad_keys_are_refused_by_name(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(MINIMAL + extra)


def test_bad_identity_and_bad_toml_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="role: Input should be 'production' or 'proxy'"):
        parse_config('host = "a"\nrole = "admin"\n')
    with pytest.raises(ConfigError, match="host: 'a b' is not a host name"):
        parse_config('host = "a b"\nrole = "proxy"\n')
    with pytest.raises(ConfigError, match="host: Field required"):
        parse_config('role = "proxy"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("host = \n")
    with pytest.raises(ConfigError, match="snapport agent init"):
        load_config(tmp_path)
    (tmp_path / "agent.toml").write_text(MINIMAL)
    assert load_config(tmp_path) == AgentConfig(host="systemtwo", role=Role.PROXY)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("198.18.0.2:8443", "198.18.0.2", 8443), ("systemtwo:1", "systemtwo", 1), ("[::1]:65535", "::1", 65535)],
)
def test_addresses(text: str, host: str, port: int) -> None:
    address = parse_address(text)
    assert (address.host, address.port) == (host, port)
    assert parse_address(str(address)) == address


@pytest.mark.parametrize("bad", ["", "host", ":8443", "host:", "host:0", "host:65536", "::1:8443", "[x]:1", "a b:1"])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_address(bad)
    assert parse_address("127.0.0.1:0", any_port=True).port == 0
