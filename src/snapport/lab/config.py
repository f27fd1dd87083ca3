"""What a lab is made of: its directory, the names of its namespaces, its addresses (198.18.0.0/15 only), sizes."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from snapport.errors import UsageError

DEFAULT_DIR = Path("/var/lib/snapport-lab")
# RFC 2544 sets 198.18.0.0/15 aside for benchmarking: it never collides with a real network (DESIGN §7).
LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
DEFAULT_SUBNET = ipaddress.IPv4Network("198.18.0.0/30")
DEFAULT_ARRAY_SIZE = 8 << 30
DEFAULT_DATA_SIZE = 1 << 30
DEFAULT_AGENT_PORT = 8443
DATA_MOUNT = Path("/srv/data")
DATA_IMAGE = "data"  # the data volume's RBD image, in the lab cluster's pool, with `--storage ceph`
STORAGE = ("array", "ceph")
Storage = Literal["array", "ceph"]
LINK = "lab0"  # the veth end's name inside each host's network namespace

_SUFFIX = re.compile(r"^[a-z0-9]{1,16}$")


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One of the two hosts: `key` names its directories (homes/one), `name` is its SNAPPORT_HOST."""

    key: str
    name: str
    role: str  # the agent certificate's role: production (systemOne) or proxy (systemTwo)


ONE = HostSpec("one", "systemOne", "production")
TWO = HostSpec("two", "systemTwo", "proxy")
HOSTS = (ONE, TWO)


def valid_suffix(suffix: str) -> str:
    """A namespace-name suffix: 1 to 16 lower-case letters and digits (or empty for the default names)."""
    if suffix and not _SUFFIX.match(suffix):
        raise UsageError(f"{suffix!r} is not a lab suffix (1 to 16 lower-case letters and digits)")
    return suffix


def valid_subnet(text: str | ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """A subnet inside 198.18.0.0/15 with room for two hosts (a /30 or larger); refuses every other range."""
    try:
        subnet = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise UsageError(f"{text!s} is not an IPv4 subnet: {exc}") from None
    if not subnet.subnet_of(LAB_RANGE):
        raise UsageError(f"the lab's addresses must come from {LAB_RANGE} (RFC 2544 benchmarking), not {subnet}")
    if subnet.prefixlen > 30:
        raise UsageError(f"{subnet} has no room for two hosts; use a /30 or larger")
    return subnet


@dataclass(frozen=True, slots=True)
class LabConfig:
    """Everything `lab up` needs to know; the defaults make the lab the README's demo runs."""

    directory: Path = DEFAULT_DIR
    suffix: str = ""
    subnet: ipaddress.IPv4Network = DEFAULT_SUBNET
    array_size: int = DEFAULT_ARRAY_SIZE
    data_size: int = DEFAULT_DATA_SIZE
    agent_port: int = DEFAULT_AGENT_PORT
    agents: bool | None = None  # None: start them if `snapport agent serve` exists
    storage: Storage = "array"  # where the data volume lives: the file-backed array, or RBD on a Ceph cluster

    def __post_init__(self) -> None:
        valid_suffix(self.suffix)
        valid_subnet(self.subnet)
        if self.data_size < 320 << 20 or self.data_size % 512:
            raise UsageError("the data volume needs at least 320 MiB (XFS), in whole 512-byte sectors")
        if self.array_size < self.data_size + (256 << 20):
            raise UsageError("the array filesystem must exceed the data volume by at least 256 MiB")
        if self.storage not in STORAGE:
            raise UsageError(f"{self.storage!r} is not a lab storage ({', '.join(STORAGE)})")
        if not 1 <= self.agent_port <= 65535:
            raise UsageError(f"{self.agent_port} is not a TCP port")

    def netns(self, host: HostSpec) -> str:
        """The network namespace of `host`: snapport-one, or snapport-one-SUFFIX."""
        return f"snapport-{host.key}" + (f"-{self.suffix}" if self.suffix else "")

    def address(self, host: HostSpec) -> ipaddress.IPv4Interface:
        """systemOne takes the subnet's first host address, systemTwo the second."""
        hosts = self.subnet.hosts()
        first = next(hosts)
        chosen = first if host == ONE else next(hosts)
        return ipaddress.IPv4Interface(f"{chosen}/{self.subnet.prefixlen}")
