"""`snapport array`: the file-backed array (DESIGN §7) — make one, create LUNs, present them to this host."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from snapport.cli.output import emit_json, table
from snapport.errors import UsageError
from snapport.osal.host import this_host_name
from snapport.osal.runner import SubprocessRunner
from snapport.providers.reflink_array import Array, Lun

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
dir_argument = click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
lun_argument = click.argument("lun_id", metavar="LUN")

_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from `512M`, `2G`, `1T`, `4096` (binary units; a multiple of 512)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"{text!r} is not a size (e.g. 512M, 2G)")
    size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if size <= 0 or size % 512:
        raise UsageError(f"a LUN size must be a positive multiple of 512 bytes, not {text!r}")
    return size


def _human(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def _open(directory: Path) -> Array:
    return Array.open(directory, SubprocessRunner())


def _lun_json(lun: Lun) -> dict[str, Any]:
    return lun.to_json()


@click.group("array")
def array() -> None:
    """A file-backed storage array on a reflink filesystem (XFS or btrfs)."""


@array.command("init")
@dir_argument
@json_option
def init(directory: Path, as_json: bool) -> None:
    """Make DIR an array (DIR must be on a filesystem that can reflink)."""
    made = Array.init(directory, SubprocessRunner())
    if as_json:
        emit_json({"array": made.array_id, "path": str(made.path)})
    else:
        click.echo(f"array {made.array_id} at {made.path}")


@array.group("lun")
def lun() -> None:
    """LUNs of an array."""


@lun.command("create")
@dir_argument
@click.option("--name", required=True, help="A name for the LUN (free text).")
@click.option("--size", "size", required=True, help="Size, e.g. 512M or 2G (sparse: costs nothing until written).")
@json_option
def lun_create(directory: Path, name: str, size: str, as_json: bool) -> None:
    """Create a LUN in DIR."""
    made = _open(directory).create_lun(name, parse_size(size))
    if as_json:
        emit_json({"lun": made.id, "serial": made.serial, "name": made.name, "size_bytes": made.size_bytes})
    else:
        click.echo(f"LUN {made.id} (serial {made.serial}, {_human(made.size_bytes)}) created")


@lun.command("delete")
@dir_argument
@lun_argument
@json_option
def lun_delete(directory: Path, lun_id: str, as_json: bool) -> None:
    """Delete a LUN of DIR (refused while it is presented to any host)."""
    deleted = _open(directory).delete_lun(lun_id)
    if as_json:
        emit_json({"lun": lun_id, "deleted": deleted})
    else:
        click.echo(f"LUN {lun_id} {'deleted' if deleted else 'was already gone'}")


@array.command("present")
@dir_argument
@lun_argument
@click.option("--read-only", is_flag=True, help="Present the LUN read-only.")
@json_option
def present(directory: Path, lun_id: str, read_only: bool, as_json: bool) -> None:
    """Present LUN to this host as a loop device ($SNAPPORT_HOST names the host)."""
    device = _open(directory).present(lun_id, this_host_name(), read_only=read_only)
    if as_json:
        emit_json({"device": device, "lun": lun_id, "host": this_host_name(), "read_only": read_only})
    else:
        click.echo(device)


@array.command("unpresent")
@dir_argument
@lun_argument
@json_option
def unpresent(directory: Path, lun_id: str, as_json: bool) -> None:
    """Detach the loop devices presenting LUN to this host."""
    detached = _open(directory).unpresent(lun_id, this_host_name())
    if as_json:
        emit_json({"lun": lun_id, "host": this_host_name(), "detached": detached})
    else:
        click.echo(f"LUN {lun_id}: " + (f"detached {', '.join(detached)}" if detached else "was not presented here"))


@array.command("list")
@dir_argument
@json_option
def list_luns(directory: Path, as_json: bool) -> None:
    """List the LUNs of DIR and where each is presented."""
    opened = _open(directory)
    luns = opened.luns()
    if as_json:
        emit_json({"array": opened.array_id, "path": str(opened.path), "luns": [_lun_json(x) for x in luns]})
        return
    table(
        f"array {opened.array_id}",
        ["LUN", "NAME", "SERIAL", "SIZE", "STATE", "PARENT", "SNAPSHOT", "PRESENTED TO"],
        [
            (
                x.id,
                x.name,
                x.serial,
                _human(x.size_bytes),
                x.state,
                x.parent,
                x.snapshot_id,
                "; ".join(f"{host}: {', '.join(devices)}" for host, devices in x.presented_to),
            )
            for x in luns
        ],
    )
