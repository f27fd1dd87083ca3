"""A throwaway Ceph cluster for the lab and the tests: one monitor, one manager, one BlueStore OSD on a sparse file.

`up(directory, address=...)` makes it in `directory` (its configuration, keyrings, stores, logs and a state file)
and returns a `CephSite`; `down(directory)` stops exactly the daemons it recorded, by pid (each checked to be the
recorded process first), and removes the directory. Every daemon is recorded in the state file before it is
started, so `down` also undoes an `up` that died half-way. The daemons run in the foreground of their own session
(no fork, so their pids are the ones recorded), bound to `address` only (127.0.0.1, or a lab host's veth address
when `launcher` puts them in its network namespace). Authentication is cephx, always.

What the cluster is tuned for (a lab, not a production cluster): pool size 1 (`osd pool default size`, `mon allow
pool size one`, `osd crush chooseleaf type = 0`), a monitor that proposes changes every 20 ms instead of every
second (`paxos propose interval`: an RBD snapshot allocates its id through the monitor, so the default makes each
snapshot take a second, inside the freeze window), format-2 clones of unprotected snapshots (`rbd default clone
format = 2` with `require-min-compat-client mimic`), no librbd cache (a write is in the cluster when it returns),
and warnings about free space and insecure global ids silenced.

Two client identities besides the admin are made, with the caps `docs/providers.md` gives each role:
`client.snapport-production` and `client.snapport-proxy`.
"""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from snapport.errors import SystemCommandError
from snapport.lab import process
from snapport.lab.state import ProcessRecord
from snapport.osal.atomic import write_atomically
from snapport.osal.runner import Runner, SubprocessRunner

TOOLS = ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph-authtool", "monmaptool", "ceph", "rbd", "rbd-fuse")
STATE_FILE = "cluster.json"
CONF_FILE = "ceph.conf"
MON_PORT = 3300  # msgr2's
OSD_SIZE_BYTES = 8 << 30  # sparse: only what is written takes room
UP_TIMEOUT_S = 60.0
POOL = "rbd"
CLIENTS = {
    # name -> caps; both roles use RBD images of the pool and nothing else (docs/providers.md argues the choice)
    "snapport-production": ("mon", "profile rbd", "osd", f"profile rbd pool={POOL}", "mgr", "profile rbd"),
    "snapport-proxy": ("mon", "profile rbd", "osd", f"profile rbd pool={POOL}", "mgr", "profile rbd"),
}


class ClusterState(BaseModel):
    """What `up` made, written before each daemon starts."""

    fsid: str
    address: str
    port: int
    pool: str
    launcher: list[str]
    processes: list[ProcessRecord] = []
    ready: bool = False


@dataclass(frozen=True, slots=True)
class CephSite:
    """A running cluster as a client sees it: its configuration file and a keyring per client."""

    directory: Path
    fsid: str
    address: str
    port: int
    pool: str

    @property
    def conf(self) -> Path:
        return self.directory / CONF_FILE

    def keyring(self, client: str) -> Path:
        """The keyring of `client.<client>` (`admin`, `snapport-production`, `snapport-proxy`)."""
        return self.directory / f"client.{client}.keyring"

    @property
    def mon_address(self) -> str:
        return f"v2:{self.address}:{self.port}"


def unavailable() -> str | None:
    """Why a cluster cannot be started here (a tool missing), or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (./scripts/setup installs Ceph)" if missing else None


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _conf(directory: Path, fsid: str, address: str, port: int) -> str:
    d = directory
    return f"""[global]
fsid = {fsid}
mon host = [v2:{address}:{port}]
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
ms bind msgr1 = false
ms bind msgr2 = true
public addr = {address}
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
mon data avail warn = 1
mon data avail crit = 0
mon warn on pool no redundancy = false
paxos propose interval = 0.02
paxos min wait = 0.005
run dir = {d}/run
keyring = {d}/$name.keyring
rbd default clone format = 2
rbd default features = layering,exclusive-lock,object-map,fast-diff,deep-flatten
rbd cache = false
[client]
admin socket =
log file =
[mon]
mon data = {d}/mon/$id
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
[mgr]
mgr data = {d}/mgr/$id
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
[osd]
osd data = {d}/osd/$id
osd objectstore = bluestore
bluestore block path = {d}/osd-$id.block
osd max object name len = 256
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
"""


class _Up:
    """One `up`: every step recorded in the state file before it acts."""

    def __init__(self, directory: Path, state: ClusterState, runner: Runner, osd_size: int) -> None:
        self.directory = directory
        self.state = state
        self.runner = runner
        self.osd_size = osd_size
        self.conf = str(directory / CONF_FILE)

    def save(self) -> None:
        write_atomically(self.directory / STATE_FILE, self.state.model_dump_json(indent=2).encode())

    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> str:
        return self.runner.run([*self.state.launcher, *argv], timeout=timeout).stdout

    def ceph(self, *args: str, timeout: float = 60.0) -> str:
        admin = str(self.directory / "client.admin.keyring")
        return self.run(["ceph", "-c", self.conf, "-n", "client.admin", "-k", admin, *args], timeout=timeout)

    def daemon(self, role: str, argv: Sequence[str]) -> None:
        """Start a daemon in the foreground of its own session, recorded before and after it starts."""
        launcher = [*self.state.launcher, *argv]
        record = ProcessRecord(step=role, role=role, host="ceph", argv=list(argv), launcher=launcher)
        self.state.processes.append(record)
        self.save()
        log = self.directory / "log" / f"{role}.out"
        started = process.spawn(launcher, log=log)
        made = {"pid": started.pid, "start_ticks": started.start_ticks, "made": True}
        self.state.processes[-1] = record.model_copy(update=made)
        self.save()
        process.wait_exec(started, argv)

    def wait(self, what: str, ready: str, *args: str) -> None:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            try:
                if ready in self.ceph(*args, timeout=10.0):
                    return
            except SystemCommandError:
                pass
            if time.monotonic() > deadline:
                raise SystemCommandError(
                    f"the Ceph {what} was not up within {UP_TIMEOUT_S:g} s (see {self.directory}/log)"
                )
            time.sleep(0.25)

    def build(self) -> None:
        d, fsid, st = self.directory, self.state.fsid, self.state
        for sub in ("run", "log", "mon/a", "mgr/x", "osd/0"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / CONF_FILE).write_text(_conf(d, fsid, st.address, st.port))
        mon_keyring, admin = str(d / "mon.a.keyring"), str(d / "client.admin.keyring")
        self.run(
            ["ceph-authtool", "--create-keyring", mon_keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"]
        )
        self.run(
            ["ceph-authtool", "--create-keyring", admin, "--gen-key", "-n", "client.admin",
             "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *", "--cap", "mds", "allow *"]
        )  # fmt: skip
        self.run(["ceph-authtool", mon_keyring, "--import-keyring", admin])
        monmap = str(d / "monmap")
        self.run(["monmaptool", "--create", "--addv", "a", f"[v2:{st.address}:{st.port}]", "--fsid", fsid, monmap])
        self.run(["ceph-mon", "-c", self.conf, "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", mon_keyring])
        self.daemon("ceph-mon", ["ceph-mon", "-c", self.conf, "-i", "a", "-f"])
        self.wait("monitor", "quorum", "mon", "stat")
        mgr_keyring = str(d / "mgr.x.keyring")
        self.ceph("auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *", "mds", "allow *",
                  "-o", mgr_keyring)  # fmt: skip
        self.daemon("ceph-mgr", ["ceph-mgr", "-c", self.conf, "-i", "x", "-f"])  # before any PG query: they hang
        osd_uuid = str(uuid.uuid4())
        self.ceph("osd", "new", osd_uuid)
        with (d / "osd-0.block").open("wb") as block:
            block.truncate(self.osd_size)
        self.ceph("auth", "get-or-create", "osd.0", "mon", "allow profile osd", "mgr", "allow profile osd",
                  "osd", "allow *", "-o", str(d / "osd" / "0" / "keyring"))  # fmt: skip
        (d / "osd.0.keyring").symlink_to(d / "osd" / "0" / "keyring")
        self.run(["ceph-osd", "-c", self.conf, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], timeout=120.0)
        self.daemon("ceph-osd", ["ceph-osd", "-c", self.conf, "-i", "0", "-f"])
        self.wait("OSD", '"num_up_osds":1', "osd", "stat", "--format", "json")
        self.ceph("osd", "pool", "create", st.pool, "8", "8")
        self.ceph("osd", "set-require-min-compat-client", "mimic", "--yes-i-really-mean-it")
        self.run(["rbd", "-c", self.conf, "-n", "client.admin", "-k", admin, "pool", "init", st.pool], timeout=120.0)
        for client, caps in CLIENTS.items():
            self.ceph("auth", "get-or-create", f"client.{client}", *caps, "-o", str(d / f"client.{client}.keyring"))
        self.state.ready = True
        self.save()


def up(
    directory: Path,
    *,
    address: str = "127.0.0.1",
    port: int | None = None,
    launcher: Sequence[str] = (),
    osd_size: int = OSD_SIZE_BYTES,
    runner: Runner | None = None,
) -> CephSite:
    """Make and start a cluster in `directory` (absent or empty); on failure, what was started is stopped."""
    reason = unavailable()
    if reason is not None:
        raise SystemCommandError(f"cannot start a Ceph cluster: {reason}")
    directory = directory.absolute()
    if directory.exists() and any(directory.iterdir()):
        raise SystemCommandError(f"{directory} is not empty; a cluster is made in an absent or empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    state = ClusterState(
        fsid=str(uuid.uuid4()),
        address=address,
        # In a namespace of its own (a launcher) the cluster is alone: the monitor's usual port; else a free one.
        port=port if port is not None else (MON_PORT if launcher else _free_port(address)),
        pool=POOL,
        launcher=list(launcher),
    )
    steps = _Up(directory, state, runner or SubprocessRunner(), osd_size)
    steps.save()
    try:
        steps.build()
    except BaseException:
        down(directory)
        raise
    return site(directory)


def site(directory: Path) -> CephSite:
    """The cluster `up` made in `directory` (it must have come up)."""
    state = _load(directory)
    if state is None or not state.ready:
        raise SystemCommandError(f"no Ceph cluster is up in {directory}")
    return CephSite(directory.absolute(), state.fsid, state.address, state.port, state.pool)


def write_client_config(home: Path, site: CephSite, client: str, *, present: str = "fuse") -> Path:
    """Make `home` a client of the cluster as `client.<client>`: its `ceph.toml` (docs/providers.md)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "ceph.toml"
    keyring = site.keyring(client)
    path.write_text(f'conf = "{site.conf}"\nclient = "{client}"\nkeyring = "{keyring}"\npresent = "{present}"\n')
    return path


def admin(site: CephSite, tool: str, *args: str, runner: Runner | None = None, timeout: float = 60.0) -> str:
    """`tool` (`ceph` or `rbd`) as the cluster's administrator, run where its daemons run (in a lab host's network
    namespace, when the lab started it there); its output."""
    state = _load(site.directory)
    launcher = state.launcher if state is not None else []
    who = ["-c", str(site.conf), "-n", "client.admin", "-k", str(site.keyring("admin"))]
    return (runner or SubprocessRunner()).run([*launcher, tool, *who, *args], timeout=timeout).stdout


def create_image(site: CephSite, name: str, size: int, *, runner: Runner | None = None) -> None:
    """Create an RBD image in the cluster's pool, as its administrator."""
    admin(site, "rbd", "create", "--size", f"{size // (1 << 20)}M", f"{site.pool}/{name}", runner=runner)


def _load(directory: Path) -> ClusterState | None:
    path = directory / STATE_FILE
    if not path.exists():
        return None
    return ClusterState.model_validate_json(path.read_text())


def down(directory: Path) -> list[str]:
    """Stop the daemons `up` recorded (the OSD first), each only while it is still the recorded process, then
    remove the directory. Says what it did; a daemon that will not stop raises (the directory is then kept)."""
    state = _load(directory)
    done: list[str] = []
    if state is not None:
        for record in reversed(state.processes):
            if record.pid is None or record.start_ticks is None:
                continue
            pid = process.ProcessId(record.pid, record.start_ticks)
            done.append(f"{record.role} pid {record.pid}: {process.stop(pid, record.launcher, record.argv)}")
    if directory.exists():
        shutil.rmtree(directory)
        done.append(f"removed {directory}")
    return done


def status(directory: Path) -> dict[str, object]:
    """The cluster's state file and whether each daemon still runs (for `lab status` and people)."""
    state = _load(directory)
    if state is None:
        return {"up": False}
    daemons = {
        r.role: r.pid is not None and r.start_ticks is not None and process.alive(r.pid, r.start_ticks)
        for r in state.processes
    }
    return {"up": state.ready and all(daemons.values()), "fsid": state.fsid, "address": state.address,
            "port": state.port, "daemons": daemons}  # fmt: skip
