"""`Lab`: a lab that is up, as its state file describes it — its hosts, array, data volume and processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from snapport.errors import ObjectNotFound, UsageError
from snapport.lab import process, state
from snapport.lab.config import DATA_MOUNT, HOSTS
from snapport.lab.host import LabHost
from snapport.lab.state import ArrayRecord, ImageRecord, LabState, LunRecord, ProcessRecord
from snapport.osal.runner import Runner, SubprocessRunner

COMMIT_LOG = "sample-app.log"  # in systemOne's home: off the data volume, so it survives what happens to it


class Lab:
    """Read-only view of a lab's state with helpers to reach its hosts; `snapport.lab.build` makes one."""

    def __init__(self, directory: Path, lab_state: LabState, runner: Runner) -> None:
        self.directory = directory
        self.state = lab_state
        self.runner = runner
        self.hosts = {
            h.name: LabHost.from_state(h, lab_state.holder(h.name), runner) for h in lab_state.hosts
        }  # by SNAPPORT_HOST name, systemOne first

    @classmethod
    def open(cls, directory: Path, runner: Runner | None = None) -> Lab:
        directory = directory.resolve()
        return cls(directory, state.load(directory), runner or SubprocessRunner())

    def host(self, name: str) -> LabHost:
        """A host by its name (systemOne), key (one) or either without regard to case."""
        for host in self.hosts.values():
            if name.casefold() in (host.name.casefold(), host.key):
                return host
        raise UsageError(f"no lab host {name!r}; the hosts are {', '.join(self.hosts)}")

    @property
    def one(self) -> LabHost:
        return self.host(HOSTS[0].name)

    @property
    def two(self) -> LabHost:
        return self.host(HOSTS[1].name)

    @property
    def array_path(self) -> Path:
        found = [r for r in self.state.records if isinstance(r, ArrayRecord) and r.made]
        if not found:
            raise ObjectNotFound(f"the lab in {self.directory} has no array (yet)")
        return Path(found[0].path)

    @property
    def data_lun(self) -> LunRecord:
        found = [r for r in self.state.records if isinstance(r, LunRecord) and r.made]
        if not found:
            raise ObjectNotFound(f"the lab in {self.directory} has no data volume (yet)")
        return found[0]

    @property
    def data_mount(self) -> Path:
        """Where the data volume is mounted on systemOne (and only there)."""
        return DATA_MOUNT

    @property
    def commit_log(self) -> Path:
        """The sample application's commit log (`sample_app.last_committed_before` reads it)."""
        return self.one.home / COMMIT_LOG

    def process(self, role: str, host: str | None = None) -> ProcessRecord | None:
        found = self.state.processes(role, host)
        return found[0] if found else None

    def summary(self) -> dict[str, Any]:
        """What `lab up --json` and `lab status --json` print."""
        luns = [r for r in self.state.records if isinstance(r, LunRecord)]
        images = [r for r in self.state.records if isinstance(r, ImageRecord)]
        hosts = {}
        for host in self.hosts.values():
            procs = {}
            for rec in self.state.processes(host=host.name):
                running = rec.pid is not None and rec.start_ticks is not None
                procs[rec.role] = {
                    "pid": rec.pid,
                    "running": running
                    and process.identify(rec.pid or 0, rec.start_ticks or 0, rec.launcher, rec.argv) == "ours",
                    "log": rec.log,
                }
            hosts[host.name] = {
                "netns": host.netns,
                "address": str(host.address),
                "home": str(host.home),
                "run_dir": str(host.run_dir),
                "role": host.role,
                "processes": procs,
            }
        return {
            "dir": str(self.directory),
            "status": self.state.status,
            "suffix": self.state.suffix,
            "subnet": self.state.subnet,
            "agent_port": self.state.agent_port,
            "storage": self.state.storage,
            "hosts": hosts,
            "array": next((r.path for r in self.state.records if isinstance(r, ArrayRecord)), None),
            "data_volume": {
                "lun": luns[0].lun_id if luns else None,
                "image": images[0].image if images else None,
                "device": luns[0].device if luns else images[0].device if images else None,
                "host": luns[0].host if luns else images[0].host if images else None,
                "mount": str(DATA_MOUNT),
                "commit_log": str(self.commit_log) if self.state.hosts else None,
            },
            "notes": self.state.notes(),
        }
