"""A host's Ceph cluster: its configuration (`$SNAPPORT_HOME/ceph.toml`), a connection through librados and
librbd, and every librbd error turned into snapport's vocabulary with one line of what to do.

`ceph.toml` names the cluster's configuration file, the cephx client this host is and its keyring (never an
`auth = none` cluster), and how images are presented (`present = "auto" | "kernel" | "fuse"`)::

    conf = "/etc/ceph/ceph.conf"
    client = "snapport-production"            # cephx id: client.snapport-production
    keyring = "/etc/ceph/ceph.client.snapport-production.keyring"
    present = "auto"                          # the kernel client where /sys/bus/rbd exists, else rbd-fuse

Why librbd and not the `rbd` command: a snapshot is taken inside the freeze window, and an `rbd snap create`
process costs 65-80 ms per image (start ~19 ms, connect ~19, open ~12, snapshot ~26) where librbd's `create_snap`
on a connection and an image opened beforehand takes ~20 ms, and runs for every image at once (measured by
`bench/ceph.py`; docs/architecture.md). The bindings are Debian's `python3-rados`/`python3-rbd`, linked into the virtual
environment by `scripts/setup`; they are imported on first use, so a host without Ceph never loads them.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import importlib
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from snapport.errors import BadState, ConfigError, ObjectNotFound, ProviderError, ProviderVeto, SnapportError
from snapport.providers.ceph_rbd.fencing import ClientRecord, addresses, fence_dead

CONFIG_FILE = "ceph.toml"
CONNECT_TIMEOUT_S = 10
OP_TIMEOUT_S = 30
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$"


class CephConfig(BaseModel):
    """`$SNAPPORT_HOME/ceph.toml`: which cluster this host reaches, as which cephx client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conf: Path = Field(description="the cluster's ceph.conf")
    client: str = Field(pattern=_NAME, description="this host's cephx id (client.<id>)")
    keyring: Path = Field(description="the keyring of client.<id>")
    present: Literal["auto", "kernel", "fuse"] = "auto"


def config_path(home: Path) -> Path:
    return home / CONFIG_FILE


def load_config(home: Path) -> CephConfig | None:
    """This host's Ceph configuration, or None when it has none (the provider then supports no volume)."""
    path = config_path(home)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return CephConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


@dataclass(frozen=True, slots=True, order=True)
class ImageRef:
    """An RBD image by pool, namespace ("" for the default one) and name: `pool/name` or `pool/namespace/name`."""

    pool: str
    namespace: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> ImageRef:
        parts = spec.split("/")
        if len(parts) == 2:
            parts.insert(1, "")
        if len(parts) != 3 or not all(_valid(p) for p in (parts[0], parts[2])) or (parts[1] and not _valid(parts[1])):
            raise ObjectNotFound(f"{spec!r} is not an RBD image (POOL/IMAGE or POOL/NAMESPACE/IMAGE)")
        return cls(parts[0], parts[1], parts[2])

    def __str__(self) -> str:
        return "/".join(p for p in (self.pool, self.namespace, self.name) if p)


def _valid(part: str) -> bool:
    return bool(re.match(_NAME, part)) and part not in (".", "..")


def _bindings() -> tuple[ModuleType, ModuleType]:
    try:
        return importlib.import_module("rados"), importlib.import_module("rbd")
    except ImportError:
        raise ProviderError(
            "the Ceph client libraries are not installed (python3-rados, python3-rbd; ./scripts/setup links them)"
        ) from None


def translate(exc: BaseException, doing: str) -> SnapportError:
    """A librados/librbd error as snapport's, in one line."""
    name = type(exc).__name__
    text = f"{doing}: {exc}"
    if name in ("ImageNotFound", "ObjectNotFound"):
        return ObjectNotFound(text)
    if name in ("ImageBusy", "ImageHasSnapshots", "ImageExists", "ObjectBusy", "ObjectExists"):
        return ProviderVeto(text)
    if name == "ReadOnlyImage":
        return BadState(f"{text}; it is open read-only")
    if name in {"PermissionError", "PermissionDeniedError"}:
        return ProviderError(f"{text}; check the caps of this host's cephx client (docs/ceph.md)")
    if name in ("TimedOut", "Timeout", "InterruptedOrTimeoutError"):
        return ProviderError(f"{text}; the cluster did not answer (monitors or OSDs down, or unreachable)")
    if name in ("NoSpace", "DiskQuotaExceeded"):
        return ProviderError(f"{text}; the cluster or the pool is full")
    return ProviderError(text)


# A ceph.conf must say where the monitors are: without it librados asks DNS (and prints to stderr) before failing.
_MONITORS = re.compile(r"^\s*mon[ _-]+(host|addr|dns[ _-]+srv[ _-]+name)\s*=", re.IGNORECASE | re.MULTILINE)
_KEY = re.compile(r"^key\s*=\s*(.*\S)$")


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"{path} (the {what} named in ceph.toml) does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{path} (the {what} named in ceph.toml): {exc.strerror}") from None


def check_files(config: CephConfig) -> None:
    """Refuse, before librados is asked, a ceph.conf that names no monitor and a keyring with no usable key for
    the client: librados reports both only as an errno (EIO, ENOENT), after a DNS query for the first."""
    if not _MONITORS.search(_read(config.conf, "Ceph configuration")):
        raise ConfigError(f"{config.conf} names no monitor (`mon host = ...`); copy the cluster's ceph.conf there")
    section, key = "", None
    for line in _read(config.keyring, "keyring").splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == f"client.{config.client}" and (match := _KEY.match(line)):
            key = match.group(1)
    if key is None:
        raise ConfigError(
            f"{config.keyring} holds no key for client.{config.client} (ceph.toml's client and keyring must match; "
            f"`ceph auth get client.{config.client} -o {config.keyring}` on an admin host writes it)"
        )
    try:
        valid = len(base64.b64decode(key, validate=True)) > 12
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise ConfigError(f"{config.keyring}: the key of client.{config.client} is not a cephx key (garbled?)")


class Cluster:
    """One connection to the host's cluster, opened on first use and kept (a commit must not pay for it). With a
    home, connecting fences that home's dead clients and records this one (fencing.py)."""

    def __init__(self, config: CephConfig, home: Path | None = None) -> None:
        self.config = config
        self.home = home
        self._rados: Any = None
        self._record: ClientRecord | None = None
        self._ioctx: dict[tuple[str, str], Any] = {}

    @property
    def rbd(self) -> ModuleType:
        return _bindings()[1]

    def connect(self) -> Any:
        if self._rados is None:
            rados, _ = _bindings()
            check_files(self.config)
            config, client = self.config, f"client.{self.config.client}"
            try:
                handle = rados.Rados(
                    conffile=str(config.conf),
                    rados_id=config.client,
                    conf={
                        "keyring": str(config.keyring),
                        "client_mount_timeout": str(CONNECT_TIMEOUT_S),
                        "rados_mon_op_timeout": str(OP_TIMEOUT_S),
                        "rados_osd_op_timeout": str(OP_TIMEOUT_S),
                        "admin_socket": "",
                        "log_file": "",
                        "rbd_default_clone_format": "2",  # clones of unprotected snapshots (mimic and later)
                    },
                )
            except Exception as exc:
                raise ConfigError(f"{config.conf} is not a usable Ceph configuration: {exc}") from None
            try:
                handle.connect(timeout=CONNECT_TIMEOUT_S)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    handle.shutdown()
                raise _connect_error(exc, config, client) from None
            self._rados = handle
            if self.home is not None:
                fence_dead(self.home, handle)
                self._record = ClientRecord(self.home, addresses(str(handle.get_addrs())))
                atexit.register(self._record.release)  # an exit is no death: only a killed client is fenced
        return self._rados

    @property
    def fsid(self) -> str:
        return str(self.connect().get_fsid())

    def ioctx(self, pool: str, namespace: str) -> Any:
        key = (pool, namespace)
        if key not in self._ioctx:
            try:
                io = self.connect().open_ioctx(pool)
            except SnapportError:
                raise
            except Exception as exc:
                if type(exc).__name__ == "ObjectNotFound":
                    raise ObjectNotFound(f"pool {pool!r} does not exist in the Ceph cluster {self.fsid}") from None
                raise translate(exc, f"pool {pool!r}") from None
            io.set_namespace(namespace)
            self._ioctx[key] = io
        return self._ioctx[key]

    @contextlib.contextmanager
    def image(self, ref: ImageRef, *, read_only: bool = False) -> Iterator[Any]:
        """An open image; every librbd error inside the block comes out in snapport's vocabulary."""
        try:
            handle = self.rbd.Image(self.ioctx(ref.pool, ref.namespace), ref.name, read_only=read_only)
        except SnapportError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "ImageNotFound":
                raise ObjectNotFound(f"RBD image {ref} does not exist") from None
            raise translate(exc, f"RBD image {ref}") from None
        try:
            yield handle
        except SnapportError:
            raise
        except Exception as exc:
            raise translate(exc, f"RBD image {ref}") from None
        finally:
            with contextlib.suppress(Exception):
                handle.close()

    def call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` with librbd's errors translated."""
        try:
            return fn(*args, **kwargs)
        except SnapportError:
            raise
        except Exception as exc:
            raise translate(exc, doing) from None

    def exists(self, ref: ImageRef) -> bool:
        """Whether the image exists (an image of a pool that does not exist does not)."""
        try:
            io = self.ioctx(ref.pool, ref.namespace)
        except ObjectNotFound:
            return False
        return ref.name in self.call(f"pool {ref.pool}", self.rbd.RBD().list, io)

    def remove(self, ref: ImageRef) -> None:
        """Remove an image (refused while a client has it open: `ProviderVeto`)."""
        self.call(f"removing RBD image {ref}", self.rbd.RBD().remove, self.ioctx(ref.pool, ref.namespace), ref.name)

    def close(self) -> None:
        for io in self._ioctx.values():
            with contextlib.suppress(Exception):
                io.close()
        self._ioctx.clear()
        if self._rados is not None:
            with contextlib.suppress(Exception):
                self._rados.shutdown()
            self._rados = None
        if self._record is not None:
            self._record.release()
            self._record = None


def _connect_error(exc: BaseException, config: CephConfig, client: str) -> SnapportError:
    """Why connecting failed, in one line: cephx refused the key, no monitor is known, or none answered."""
    name = type(exc).__name__
    if name in {"PermissionError", "PermissionDeniedError"}:
        return ConfigError(
            f"cephx refused {client} with the key in {config.keyring}: the cluster has no such client, or another "
            f"key for it (`ceph auth get {client}` on an admin host shows it)"
        )
    if name == "ObjectNotFound":
        return ConfigError(f"{config.conf} leads to no monitor (`mon host`): cannot reach the Ceph cluster")
    if name in ("TimedOut", "InterruptedOrTimeoutError"):
        return ProviderError(
            f"no monitor of {config.conf} answered {client} within {CONNECT_TIMEOUT_S} s: the monitors are down or "
            "unreachable from this host (`mon host`, firewall)"
        )
    return translate(exc, f"cannot reach the Ceph cluster of {config.conf} as {client}")
