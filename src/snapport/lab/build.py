"""`lab up`: build the two-host lab step by step, recording each resource before making it.

Steps, in order (each is also a fault point `lab.<step>`, hit once the step is done and recorded):

    netns        two network namespaces: snapport-one[-SUFFIX], snapport-two[-SUFFIX]
    veth         a veth pair made inside them (`lab0` on each side), addresses from 198.18.0.0/15, links up
    link-check   each host reaches the other (a TCP handshake or its reset: the lab has no ping)
    array        an XFS image on a loop device mounted at DIR/array-fs in the machine's mount namespace (so both
                 hosts see it, as they would a SAN), and a file-backed array in it; or, with `storage="ceph"`:
    ceph         a Ceph cluster (`snapport.lab.ceph`) in DIR/ceph, its daemons in systemOne's network namespace
                 bound to systemOne's address (systemTwo reaches it over the veth, as a real host reaches a
                 cluster), cephx; each home gets a `ceph.toml` (systemOne the production client, systemTwo the proxy)
    homes        DIR/homes/<host> (SNAPPORT_HOME), DIR/run/<host> (SNAPPORT_RUN_DIR), DIR/logs
    holders      per host, a process holding a mount namespace of its own inside the host's network namespace
    data-volume  a LUN presented to systemOne (or the RBD image `data`, presented by `snapport rbd present` on
                 systemOne), XFS on it, mounted at /srv/data on systemOne only
    sample-app   the SQLite application writing to /srv/data without pause
    agents       certificates and `snapport agent serve` on each host, when the agent is built
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from snapport import faults
from snapport.errors import BadState, SystemCommandError
from snapport.lab import agents, ceph, network, process, state
from snapport.lab.config import DATA_IMAGE, DATA_MOUNT, HOSTS, LINK, ONE, LabConfig
from snapport.lab.handle import COMMIT_LOG, Lab
from snapport.lab.host import HOLDER_ARGV, LabHost, holder_launcher
from snapport.lab.state import (
    AnyRecord,
    ArrayRecord,
    CephRecord,
    DirRecord,
    FileRecord,
    HostState,
    ImageRecord,
    LabState,
    LoopRecord,
    LunRecord,
    MountRecord,
    NetnsRecord,
    NoteRecord,
    ProcessRecord,
    RecordBase,
    VethRecord,
)
from snapport.lab.teardown import is_live, teardown
from snapport.osal import loop
from snapport.osal import mount as mnt
from snapport.osal.runner import Runner, SubprocessRunner
from snapport.providers.reflink_array import Array

TOOLS = ("ip", "unshare", "nsenter", "losetup", "mount", "umount", "mkfs.xfs")
APP_START_S = 20.0

StepCallback = Callable[[str, str], None]  # (step, what was done)
R = TypeVar("R", bound=AnyRecord)


def up(config: LabConfig, runner: Runner | None = None, on_step: StepCallback | None = None) -> Lab:
    """Build the lab described by `config`; on failure, remove what was made and raise the failure."""
    directory = config.directory.resolve()
    created_dir = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    runner = runner or SubprocessRunner()
    with state.lab_lock(directory):
        try:
            created_dir = _refuse_or_clear_stale(directory, runner, on_step) or created_dir
            _check_prerequisites(config)
        except BaseException:
            if created_dir:  # leave no trace of a refused `up`
                (directory / state.LOCK_NAME).unlink(missing_ok=True)
                directory.rmdir()
            raise
        builder = _Builder(config, directory, created_dir, runner, on_step or (lambda step, what: None))
        try:
            builder.build()
        except BaseException as failure:
            builder.state.status = "failed"
            state.save(directory, builder.state)
            report = teardown(directory, runner)
            if report.failed:
                raise SystemCommandError(
                    f"lab up failed ({failure}); undoing it left: {'; '.join(report.failed_lines())} "
                    f"(see {state.state_path(directory)}; run `snapport lab down --dir {directory}`)"
                ) from failure
            raise
    return Lab.open(directory, runner)


def _refuse_or_clear_stale(directory: Path, runner: Runner, on_step: StepCallback | None) -> bool:
    """Refuse a lab that is up; clear the files of one whose resources are all gone. True: that old lab had made
    the directory (so the new one owns it now)."""
    if not state.state_path(directory).exists():
        return False
    old = state.load(directory)
    live = is_live(old, runner)
    if live:
        raise BadState(
            f"a lab is up in {directory} ({live[0]}{' and more' if len(live) > 1 else ''}); "
            f"run `snapport lab down --dir {directory}` first"
        )
    # Everything of an old lab is gone (a reboot): remove its files before starting again.
    report = teardown(directory, runner, keep_directory=True)
    if report.failed:
        raise BadState(f"the old lab in {directory} could not be cleared: {'; '.join(report.failed_lines())}")
    if on_step:
        on_step("stale", f"cleared the files of an old lab in {directory} (its resources were gone)")
    return old.created_dir


def _check_prerequisites(config: LabConfig) -> None:
    if os.geteuid() != 0:
        raise BadState("the lab needs root (network namespaces, loop devices, mounts)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise BadState(f"the lab needs {', '.join(missing)} (Debian: iproute2, util-linux, mount, xfsprogs)")
    for host in HOSTS:
        name = config.netns(host)
        if network.netns_exists(name):
            raise BadState(
                f"network namespace {name} exists already (another lab?); use another --suffix, or `snapport lab "
                "down --dir` that lab's directory"
            )


class _Builder:
    def __init__(
        self, config: LabConfig, directory: Path, created_dir: bool, runner: Runner, on_step: StepCallback
    ) -> None:
        self.config = config
        self.directory = directory
        self.runner = runner
        self.on_step = on_step
        self.state = LabState(
            directory=str(directory),
            suffix=config.suffix,
            subnet=str(config.subnet),
            agent_port=config.agent_port,
            storage=config.storage,
            created_dir=created_dir,
            hosts=[
                HostState(
                    key=h.key,
                    name=h.name,
                    role=h.role,
                    netns=config.netns(h),
                    address=str(config.address(h)),
                    home=str(directory / "homes" / h.key),
                    run_dir=str(directory / "run" / h.key),
                )
                for h in HOSTS
            ],
        )
        self.save()

    # -- recording ---------------------------------------------------------------------------------------------

    def save(self) -> None:
        state.save(self.directory, self.state)

    def intend(self, record: R) -> R:
        """Record a resource before making it."""
        self.state.records.append(record)
        self.save()
        return record

    def made(self, record: RecordBase) -> None:
        record.made = True
        self.save()

    def make(self, record: R, action: Callable[[], object]) -> R:
        """Record, act, mark made. A failing action made nothing (each one used here undoes itself), so its
        record is dropped: `down` must never remove a resource of the same name that is not ours."""
        self.intend(record)
        try:
            action()
        except BaseException:
            self.state.records.remove(record)
            self.save()
            raise
        self.made(record)
        return record

    def done(self, step: str, what: str) -> None:
        self.on_step(step, what)
        faults.inject(f"lab.{step}")

    def host(self, name: str) -> LabHost:
        spec = next(h for h in self.state.hosts if h.name == name)
        return LabHost.from_state(spec, self.state.holder(name), self.runner)

    # -- the steps ---------------------------------------------------------------------------------------------

    def build(self) -> None:
        self.netns()
        self.veth()
        self.link_check()
        if self.config.storage == "ceph":
            self.ceph_cluster()
        else:
            self.array()
        self.homes()
        self.holders()
        if self.config.storage == "ceph":
            self.rbd_data_volume()
        else:
            self.data_volume()
        self.sample_app()
        self.agents()
        self.state.status = "up"
        self.save()

    def netns(self) -> None:
        for host in self.state.hosts:
            self.make(
                NetnsRecord(step="netns", name=host.netns),
                functools.partial(network.add_netns, self.runner, host.netns),
            )
        self.done("netns", ", ".join(h.netns for h in self.state.hosts))

    def veth(self) -> None:
        one, two = self.state.hosts
        record = VethRecord(step="veth", netns=one.netns, name=LINK, peer_netns=two.netns, peer_name=LINK)
        self.make(record, lambda: network.add_veth(self.runner, one.netns, LINK, two.netns, LINK))
        for host in (one, two):
            network.configure(self.runner, host.netns, LINK, ipaddress.IPv4Interface(host.address))
        self.done("veth", f"{one.netns}/{LINK} {one.address} <-> {two.netns}/{LINK} {two.address}")

    def link_check(self) -> None:
        one, two = self.state.hosts
        for a, b in ((one, two), (two, one)):
            network.reachable(self.runner, a.netns, self.host(b.name).ip)
        text = f"{one.name} ({one.address}) and {two.name} ({two.address}) reach each other"
        self.made(self.intend(NoteRecord(step="link-check", text=text)))
        self.done("link-check", text)

    def array(self) -> None:
        image = self.directory / "array.img"
        mount_point = self.directory / "array-fs"

        def make_image() -> None:
            fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, self.config.array_size)  # sparse: costs nothing until written
            finally:
                os.close(fd)

        self.make(FileRecord(step="array", path=str(image)), make_image)
        self.runner.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], timeout=300)
        loop_record = self.intend(LoopRecord(step="array", image=str(image)))
        loop_record.device = loop.attach(self.runner, image)
        self.made(loop_record)
        self.make(DirRecord(step="array", path=str(mount_point)), mount_point.mkdir)
        self.make(
            MountRecord(step="array", path=str(mount_point), source=loop_record.device),
            lambda: mnt.mount(self.runner, loop_record.device or "", mount_point, fs_type="xfs"),
        )
        array_record = self.intend(ArrayRecord(step="array", path=str(mount_point / "array")))
        array_record.array_id = Array.init(mount_point / "array", self.runner).array_id
        self.made(array_record)
        self.done("array", f"{array_record.path} (XFS on {loop_record.device}, {image})")

    def ceph_cluster(self) -> None:
        one = next(h for h in self.state.hosts if h.name == ONE.name)
        record = self.intend(CephRecord(step="ceph", path=str(self.directory / "ceph")))
        address = str(ipaddress.IPv4Interface(one.address).ip)
        site = ceph.up(Path(record.path), address=address, launcher=["ip", "netns", "exec", one.netns])
        self.made(record)
        self.done("ceph", f"Ceph cluster {site.fsid} at {site.mon_address} (in {one.netns}), pool {site.pool}")

    def _ceph_site(self) -> ceph.CephSite:
        found = [r for r in self.state.records if isinstance(r, CephRecord)]
        return ceph.site(Path(found[0].path))

    def homes(self) -> None:
        for sub in ("homes", "run", "logs"):
            path = self.directory / sub
            self.make(DirRecord(step="homes", path=str(path)), functools.partial(path.mkdir, mode=0o755))
        for host in self.state.hosts:
            Path(host.home).mkdir(mode=0o700)
            Path(host.run_dir).mkdir(mode=0o755)
        if self.config.storage == "ceph":
            site = self._ceph_site()
            for host in self.state.hosts:
                client = "snapport-production" if host.name == ONE.name else "snapport-proxy"
                ceph.write_client_config(Path(host.home), site, client)
        self.done("homes", ", ".join(f"{h.name}: {h.home}" for h in self.state.hosts))

    def holders(self) -> None:
        pids = []
        for host in self.state.hosts:
            launcher = holder_launcher(host.netns)
            record = self.intend(
                ProcessRecord(step="holders", role="holder", host=host.name, argv=list(HOLDER_ARGV), launcher=launcher)
            )
            started = self.spawn(record, log=None)
            pids.append(f"{host.name}: pid {started.pid}")
        self.done("holders", ", ".join(pids))

    def spawn(self, record: ProcessRecord, log: Path | None) -> process.ProcessId:
        started = process.spawn(record.launcher, log=log)
        record.pid, record.start_ticks = started.pid, started.start_ticks
        self.save()  # the pid is known: from now on `down` can stop it
        process.wait_exec(started, record.argv)
        self.made(record)
        return started

    def data_volume(self) -> None:
        one = self.host(ONE.name)
        array = self._array()
        lun_record = self.intend(LunRecord(step="data-volume", array=str(array.path), host=one.name))
        lun = array.create_lun("data", self.config.data_size)
        lun_record.lun_id = lun.id
        self.save()
        lun_record.device = array.present(lun.id, one.name)
        self.made(lun_record)
        self.runner.run(["mkfs.xfs", "-q", "-f", lun_record.device], timeout=300)
        # A small tmpfs over /srv on systemOne gives /srv/data a mount point that exists on systemOne alone: no
        # directory is made on the machine's own disk, and labs running side by side do not share one.
        srv = DATA_MOUNT.parent
        self.make(
            MountRecord(step="data-volume", path=str(srv), source="tmpfs", host=one.name),
            lambda: one.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "snapport-lab", str(srv)]),
        )
        one.run(["mkdir", str(DATA_MOUNT)])
        self.make(
            MountRecord(step="data-volume", path=str(DATA_MOUNT), source=lun_record.device, host=one.name),
            lambda: one.run(["mount", "-t", "xfs", lun_record.device or "", str(DATA_MOUNT)]),
        )
        self.done("data-volume", f"LUN {lun.id} on {lun_record.device}, mounted at {DATA_MOUNT} on {one.name} only")

    def rbd_data_volume(self) -> None:
        one = self.host(ONE.name)
        site = self._ceph_site()
        spec = f"{site.pool}/{DATA_IMAGE}"
        record = self.intend(ImageRecord(step="data-volume", host=one.name, image=spec))
        ceph.create_image(site, DATA_IMAGE, self.config.data_size, runner=self.runner)
        presented = one.run(agents.snapport_argv("rbd", "present", spec, "--json"), timeout=120)
        record.device = str(json.loads(presented.stdout)["device"])
        self.made(record)
        self.runner.run(["mkfs.xfs", "-q", "-f", record.device], timeout=300)
        srv = DATA_MOUNT.parent
        self.make(
            MountRecord(step="data-volume", path=str(srv), source="tmpfs", host=one.name),
            lambda: one.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "snapport-lab", str(srv)]),
        )
        one.run(["mkdir", str(DATA_MOUNT)])
        self.make(
            MountRecord(step="data-volume", path=str(DATA_MOUNT), source=record.device, host=one.name),
            lambda: one.run(["mount", "-t", "xfs", record.device or "", str(DATA_MOUNT)]),
        )
        self.done("data-volume", f"RBD image {spec} on {record.device}, mounted at {DATA_MOUNT} on {one.name} only")

    def _array(self) -> Array:
        found = [r for r in self.state.records if isinstance(r, ArrayRecord)]
        return Array.open(Path(found[0].path), self.runner)

    def sample_app(self) -> None:
        one = self.host(ONE.name)
        commit_log = one.home / COMMIT_LOG
        db = DATA_MOUNT / "app.db"
        argv = [sys.executable, "-m", "snapport.lab.sample_app", "--db", str(db), "--log", str(commit_log)]
        out = self.directory / "logs" / "sample-app.out"
        record = self.intend(
            ProcessRecord(
                step="sample-app", role="sample-app", host=one.name, argv=argv, launcher=one.command(argv), log=str(out)
            )
        )
        started = self.spawn(record, log=out)
        deadline = time.monotonic() + APP_START_S
        while not (commit_log.exists() and commit_log.stat().st_size > 0):
            if not process.alive(started.pid, started.start_ticks) or time.monotonic() > deadline:
                tail = out.read_text(errors="replace").strip().splitlines()[-3:] if out.exists() else []
                raise SystemCommandError(f"the sample application made no commit: {' / '.join(tail) or 'no output'}")
            time.sleep(0.05)
        self.done("sample-app", f"pid {started.pid} writing {DATA_MOUNT / 'app.db'} (commit log {commit_log})")

    def agents(self) -> None:
        hosts = [self.host(h.name) for h in self.state.hosts]
        why_not = agents.unavailable(self.runner) if self.config.agents is not False else "--no-agents"
        if why_not is not None:
            text = f"agents: skipped: {why_not}"
            self.made(self.intend(NoteRecord(step="agents", text=text)))
            self.done("agents", text)
            return
        ca_dir = self.directory / "ca"
        self.make(DirRecord(step="agents", path=str(ca_dir)), lambda: ca_dir.mkdir(mode=0o700))
        agents.certificates(self.runner, ca_dir, hosts)
        logs = {}
        for host in hosts:
            agents.write_config(host, [h for h in hosts if h is not host], self.config.agent_port)
            argv = agents.serve_argv()
            logs[host.name] = self.directory / "logs" / f"agent-{host.key}.out"
            record = self.intend(
                ProcessRecord(
                    step="agents",
                    role="agent",
                    host=host.name,
                    argv=argv,
                    launcher=host.command(argv),
                    log=str(logs[host.name]),
                )
            )
            self.spawn(record, log=logs[host.name])
        for host in hosts:
            agents.wait_listening(host, self.config.agent_port, logs[host.name])
        self.done("agents", ", ".join(f"{h.name}: https://{h.ip}:{self.config.agent_port}" for h in hosts))
