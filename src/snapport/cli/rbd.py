"""`snapport rbd`: RBD images of this host's Ceph cluster (`$SNAPPORT_HOME/ceph.toml`) presented as block devices."""

from __future__ import annotations

from typing import Any

import click

from snapport.cli.env import Env, json_option, pass_env
from snapport.cli.output import emit_json, table
from snapport.osal.host import this_host_name
from snapport.osal.runner import SubprocessRunner
from snapport.providers.base import ProviderHost
from snapport.providers.ceph_rbd import CephRbdProvider, ImageRef, volumes
from snapport.providers.ceph_rbd.presentation import Presented

image_argument = click.argument("image", metavar="POOL/IMAGE")


def _provider(env: Env) -> CephRbdProvider:
    return CephRbdProvider(ProviderHost(name=this_host_name(), home=env.home, runner=SubprocessRunner()))


def _presented_json(presented: Presented) -> dict[str, Any]:
    return {
        "image": str(presented.image),
        "device": presented.device,
        "read_only": presented.read_only,
        "via": presented.via.value,
    }


@click.group("rbd")
def rbd() -> None:
    """RBD images of this host's Ceph cluster, presented as block devices (rbd-fuse + loop, or the kernel)."""


@rbd.command("present")
@image_argument
@click.option("--read-only", is_flag=True, help="Present the image read-only.")
@json_option
@pass_env
def present(env: Env, image: str, read_only: bool, as_json: bool) -> None:
    """Present IMAGE (POOL/IMAGE or POOL/NAMESPACE/IMAGE) to this host as a block device."""
    provider = _provider(env)
    presented = volumes.present(provider, ImageRef.parse(image), read_only=read_only)
    if as_json:
        emit_json({**_presented_json(presented), "host": provider.host.name})
    else:
        click.echo(presented.device)


@rbd.command("unpresent")
@image_argument
@json_option
@pass_env
def unpresent(env: Env, image: str, as_json: bool) -> None:
    """End this host's presentation of IMAGE (refused while it is mounted)."""
    provider = _provider(env)
    ref = ImageRef.parse(image)
    detached = volumes.unpresent(provider, ref)
    if as_json:
        emit_json({"image": str(ref), "host": provider.host.name, "detached": detached})
    else:
        click.echo(
            f"RBD image {ref}: " + (f"unpresented {', '.join(detached)}" if detached else "was not presented here")
        )


@rbd.command("list")
@json_option
@pass_env
def list_presentations(env: Env, as_json: bool) -> None:
    """List the RBD images presented to this host."""
    provider = _provider(env)
    found = volumes.presentations(provider)
    if as_json:
        emit_json({"host": provider.host.name, "presentations": [_presented_json(p) for p in found]})
        return
    table(
        f"RBD images presented to {provider.host.name}",
        ["IMAGE", "DEVICE", "MODE", "VIA"],
        [(str(p.image), p.device, "read-only" if p.read_only else "read-write", p.via.value) for p in found],
    )
