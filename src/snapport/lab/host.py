"""A lab host: a network namespace and a mount namespace kept alive by a holder process, with its own home.

Commands run "on" a host through `nsenter --target HOLDER --mount --net`, with the host's SNAPPORT_HOME,
SNAPPORT_HOST and SNAPPORT_RUN_DIR in their environment. Before entering, the holder is checked to be the
recorded process (pid and start time): a reused pid must never be mistaken for a host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapport.errors import BadState
from snapport.lab import process
from snapport.lab.state import HostState, ProcessRecord
from snapport.osal.runner import DEFAULT_TIMEOUT_S, Completed, Runner

HOLDER_ARGV = ("sleep", "infinity")


def holder_launcher(netns: str) -> list[str]:
    """The holder: in the host's network namespace (ip netns exec), in a mount namespace of its own (unshare).

    `ip netns exec` already unshares a mount namespace (to remount /sys for the netns) but as a slave of the
    machine's; unshare makes the host's own, also a slave: mounts made on a host stay on it, while unmounts
    made on the machine still reach it (where the machine's / is a shared mount, as under systemd).
    """
    return ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "slave", "--", *HOLDER_ARGV]


@dataclass(frozen=True, slots=True)
class HostMount:
    """One line of a host's mount table."""

    mount_point: str
    source: str
    fs_type: str


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


@dataclass(frozen=True)
class LabHost:
    """One of the lab's two hosts, as recorded in the state file."""

    name: str  # its SNAPPORT_HOST: systemOne, systemTwo
    key: str  # one, two
    role: str
    netns: str
    address: ipaddress.IPv4Interface
    home: Path
    run_dir: Path
    holder: ProcessRecord | None
    runner: Runner

    @classmethod
    def from_state(cls, host: HostState, holder: ProcessRecord | None, runner: Runner) -> LabHost:
        return cls(
            name=host.name,
            key=host.key,
            role=host.role,
            netns=host.netns,
            address=ipaddress.IPv4Interface(host.address),
            home=Path(host.home),
            run_dir=Path(host.run_dir),
            holder=holder,
            runner=runner,
        )

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return self.address.ip

    def env(self) -> dict[str, str]:
        """What makes a `snapport` process act as this host."""
        return {"SNAPPORT_HOME": str(self.home), "SNAPPORT_HOST": self.name, "SNAPPORT_RUN_DIR": str(self.run_dir)}

    def holder_pid(self) -> int:
        """The holder's pid, after checking it is still the recorded process; `BadState` if the host is down."""
        h = self.holder
        if h is None or h.pid is None or h.start_ticks is None:
            raise BadState(f"{self.name} has no namespace holder recorded; the lab is not (fully) up")
        who = process.identify(h.pid, h.start_ticks, h.launcher, h.argv)
        if who != "ours":
            raise BadState(f"{self.name} is down: its namespace holder (pid {h.pid}) is {who}; run `snapport lab up`")
        return h.pid

    def command(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> list[str]:
        """The command line that runs `argv` on this host (its namespaces and environment), in `cwd` (default /:
        entering a mount namespace starts at its root)."""
        variables = {**self.env(), **(env or {})}
        where = [f"--wd={cwd}"] if cwd is not None else []
        return [
            "nsenter", f"--target={self.holder_pid()}", "--mount", "--net", *where, "--",
            "env", *(f"{k}={v}" for k, v in variables.items()), *argv,
        ]  # fmt: skip

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        check: bool = True,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        """Run `argv` on this host through the Runner."""
        return self.runner.run(self.command(argv, env=env), timeout=timeout, check=check, stdin=stdin)

    def mounts(self) -> list[HostMount]:
        """This host's mount table, read from its holder's /proc entry."""
        text = Path(f"/proc/{self.holder_pid()}/mountinfo").read_text()
        found = []
        for line in text.splitlines():
            left, _, right = line.partition(" - ")
            parts, tail = left.split(), right.split()
            found.append(HostMount(_unescape(parts[4]), _unescape(tail[1]) if len(tail) > 1 else "", tail[0]))
        return found

    def mount_at(self, path: str | Path) -> HostMount | None:
        """What is mounted exactly at `path` on this host (the topmost mount), or None."""
        hits = [m for m in self.mounts() if m.mount_point == str(path)]
        return hits[-1] if hits else None
