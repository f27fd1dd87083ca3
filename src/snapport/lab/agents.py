"""The lab's certificates and agents: a site CA in DIR/ca, a certificate and `agent.toml` in each host's home, and
`snapport agent serve` on each host, bound to its own 198.18 address.

Everything goes through the `snapport` command as a user would type it (the lab imports nothing of the agent),
so this step runs only once `snapport agent serve` and `snapport certs` exist.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from snapport.errors import SystemCommandError
from snapport.lab.host import LabHost
from snapport.osal.runner import Runner

AGENT_START_S = 30.0
CERTS_DIR = "certs"  # in each home: HOST.crt, HOST.key, ca.crt (where the agent looks by default)


def snapport_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "snapport", *args]


# The verbs the `snapport` command has, asked of a fresh interpreter (the lab never imports the CLI itself).
_LIST_VERBS = "import json; from snapport.cli.main import VERBS; print(json.dumps(sorted(VERBS)))"


def unavailable(runner: Runner) -> str | None:
    """Why the agents cannot be started (None: they can)."""
    done = runner.run([sys.executable, "-c", _LIST_VERBS], timeout=60)
    verbs = set(json.loads(done.stdout))
    missing = [f"`snapport {verb}`" for verb in ("agent", "certs") if verb not in verbs]
    if missing:
        return f"agent not built yet ({' and '.join(missing)} do{'es' if len(missing) == 1 else ''} not exist)"
    return None


def certificates(runner: Runner, ca_dir: Path, hosts: Sequence[LabHost]) -> None:
    """A site CA in `ca_dir`, and each host's certificate (its role, its lab address) in its home's certs/."""
    runner.run(snapport_argv("certs", "init", "--dir", str(ca_dir), "--json"), timeout=60)
    for host in hosts:
        runner.run(
            snapport_argv(
                "certs", "issue", host.name, "--role", host.role, "--ip", str(host.ip),
                "--dir", str(ca_dir), "--out", str(host.home / CERTS_DIR), "--json",
            ),
            timeout=60,
        )  # fmt: skip


def write_config(host: LabHost, peers: Sequence[LabHost], port: int) -> Path:
    """`agent.toml` in the host's home: listen on its lab address; the other host as its peer."""
    lines = [
        "# written by `snapport lab up`",
        f"host = {json.dumps(host.name)}",
        f"role = {json.dumps(host.role)}",
        f"listen_host = {json.dumps(str(host.ip))}",
        f"listen_port = {port}",
    ]
    for peer in peers:
        lines += [
            "",
            "[[peers]]",
            f"name = {json.dumps(peer.name)}",
            f"address = {json.dumps(f'{peer.ip}:{port}')}",
            f"role = {json.dumps(peer.role)}",
        ]
    path = host.home / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def serve_argv() -> list[str]:
    return snapport_argv("agent", "serve")


def wait_listening(host: LabHost, port: int, log: Path, *, timeout_s: float = AGENT_START_S) -> None:
    """Wait until the host's agent accepts connections on its address (checked from inside the host)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = host.run(
            [sys.executable, "-m", "snapport.lab.netcheck", str(host.ip), str(port), "--open"], timeout=30, check=False
        )
        if done.rc == 0:
            return
        if time.monotonic() >= deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise SystemCommandError(
                f"the agent of {host.name} does not listen on {host.ip}:{port}: {' / '.join(tail) or 'no output'}"
            )
        time.sleep(0.2)
