"""The agent's configuration, `$SNAPPORT_HOME/agent.toml`: validated by pydantic, unknown keys refused."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from snapport.agent.certs import CA_CERT, Role, host_name, same_host
from snapport.errors import ConfigError, ObjectNotFound, UsageError

CONFIG_FILENAME = "agent.toml"
DEFAULT_PORT = 8443


@dataclass(frozen=True, slots=True)
class Address:
    """Where an agent listens: a host name or IP address, and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: str, *, any_port: bool = False) -> Address:
    """`HOST:PORT` (a host name or IPv4 address) or `[IPv6]:PORT`; `UsageError` for anything else. Port 0 (a free
    port picked at bind time) only with `any_port`, for a listening address."""
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    valid = bool(sep and host and port.isdigit() and (0 if any_port else 1) <= int(port) < 65536)
    if valid and bracketed:
        valid = _is_ip(host) and ":" in host
    elif valid and ":" in host:
        valid = False  # an IPv6 address needs its brackets: "::1:8443" is ambiguous
    elif valid and not _is_ip(host):
        try:
            host_name(host)
        except UsageError:
            valid = False
    if not valid:
        raise UsageError(f"{value!r} is not an agent address HOST:PORT (e.g. 198.18.0.2:{DEFAULT_PORT})")
    return Address(host, int(port))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _host_name(value: str) -> str:
    try:
        return host_name(value)
    except UsageError as exc:
        raise ValueError(exc.message) from None


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (the agent binds an address, never a name)") from None


def _address(value: str) -> str:
    try:
        return str(parse_address(value))
    except UsageError as exc:
        raise ValueError(exc.message) from None


HostName = Annotated[str, AfterValidator(_host_name)]


class PeerConfig(BaseModel):
    """Another agent this host talks to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: HostName
    address: Annotated[str, AfterValidator(_address)]
    role: Role


class AgentConfig(BaseModel):
    """Everything `snapport agent serve` needs; relative paths are relative to `$SNAPPORT_HOME`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: HostName = Field(description="this host's name: the common name of its certificate")
    role: Role = Field(description="this host's role: the role its certificate carries")
    listen_host: Annotated[str, AfterValidator(_ip)] = Field("127.0.0.1", description="IP address to bind")
    listen_port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="TCP port; 0 picks a free one (logged)")
    cert: Path | None = Field(None, description="this host's certificate (default certs/HOST.crt)")
    key: Path | None = Field(None, description="its key (default certs/HOST.key)")
    ca: Path = Field(Path("certs") / CA_CERT, description="the site CA: the only issuer trusted")
    max_jobs: int = Field(2, ge=1, le=64, description="jobs run at once; the rest wait in order")
    lease_default_s: float = Field(3600.0, gt=0, le=7 * 86400, description="default lease on a set (seconds)")
    max_request_bytes: int = Field(1 << 20, ge=1024, le=256 << 20, description="largest request body accepted")
    shutdown_grace_s: float = Field(10.0, ge=0, le=600, description="how long stopping waits for running jobs")
    peers: tuple[PeerConfig, ...] = Field((), description="the agents this host talks to")

    @model_validator(mode="after")
    def _peers_are_unique(self) -> AgentConfig:
        names = [p.name.casefold() for p in self.peers]
        if len(set(names)) != len(names):
            raise ValueError("two peers have the same name")
        if self.host.casefold() in names:
            raise ValueError(f"peer {self.host} is this host")
        return self

    def cert_path(self, home: Path) -> Path:
        return home / (self.cert or Path("certs") / f"{self.host}.crt")

    def key_path(self, home: Path) -> Path:
        return home / (self.key or Path("certs") / f"{self.host}.key")

    def ca_path(self, home: Path) -> Path:
        return home / self.ca

    def peer(self, name: str) -> PeerConfig:
        for peer in self.peers:
            if same_host(peer.name, name):
                return peer
        raise ObjectNotFound(f"no peer {name!r} in the agent configuration")


def config_path(home: Path) -> Path:
    return home / CONFIG_FILENAME


def parse_config(text: str, *, source: str = CONFIG_FILENAME) -> AgentConfig:
    """An `AgentConfig` from TOML text; `ConfigError` naming every bad key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation(exc)}") from None


def load_config(home: Path, path: Path | None = None) -> AgentConfig:
    """The configuration at `path` (default `$SNAPPORT_HOME/agent.toml`)."""
    path = path or config_path(home)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"no agent configuration at {path}; write one with `snapport agent init`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(text, source=str(path))


def render_config(config: AgentConfig) -> str:
    """The TOML text of `config` (what `snapport agent init` writes), every key explicit."""
    lines = ["# snapport agent configuration (docs/agent.md)"]
    for name, value in config.model_dump(mode="json", exclude={"peers"}).items():
        if value is not None:
            lines.append(f"{name} = {json.dumps(value)}")
    for peer in config.peers:
        lines += ["", "[[peers]]", *(f"{k} = {json.dumps(v)}" for k, v in peer.model_dump(mode="json").items())]
    return "\n".join(lines) + "\n"


def describe_validation(exc: ValidationError, *, limit: int = 5) -> str:
    """pydantic's errors in one line: `key: what is wrong; ...` (input values are not echoed)."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {'unknown key' if error['type'] == 'extra_forbidden' else message}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
