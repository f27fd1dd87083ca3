"""`snapport doctor [--repair]`: what the catalog and the machine disagree on, and (with --repair) its resolution."""

from __future__ import annotations

from collections.abc import Callable

import click

from snapport.cli.env import Env, json_option, pass_env
from snapport.cli.output import emit_json
from snapport.errors import DoctorFound, SnapportError


@click.command("doctor")
@click.option("--repair", is_flag=True, help="Resolve each finding (thaw, unmount, detach, delete, roll back).")
@click.option(
    "--hung-after",
    type=click.FloatRange(0, 86400),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="Report a lock a live process has held longer than this.",
)
@click.option(
    "--stuck-after",
    type=click.FloatRange(0, 86400),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Take a set deleting with no change for this long for an interrupted delete.",
)
@json_option
@pass_env
def doctor(env: Env, repair: bool, hung_after: float, stuck_after: float, as_json: bool) -> None:
    """Compare the catalog with the machine: sets stuck mid-way, what each provider left (snapshot LUNs, images,
    loop devices, btrfs snapshot subvolumes, ...), mounts under the run directory, frozen volumes, locks, leases
    and jobs. Exit 0 when nothing is left wrong, else DOCTOR_FOUND (30)."""
    from snapport.coordinator.reconcile import Depth, reconcile  # noqa: PLC0415

    host = env.host_as_is
    report = reconcile(
        host,
        repair=repair,
        depth=Depth.FULL,
        hung_after_s=hung_after,
        stuck_after_s=stuck_after,
        recover_agent_state=_agent_recovery(env) if repair else None,
    )
    if as_json:
        emit_json(report.to_json())
    else:
        done = {(r.kind, r.object): r.action for r in report.repaired}
        for finding in report.found:
            line = f"found {finding.kind} {finding.object}: {finding.detail}"
            action = done.get((finding.kind, finding.object))
            click.echo(line + (f" -> {action}" if action else ""))
        for finding in report.left if repair else ():
            click.echo(f"left {finding.kind} {finding.object}: {finding.detail}")
        if not report.found:
            click.echo("nothing found: the catalog and the machine agree")
    if not report.clean:
        what = "left after repair" if repair else "found"
        raise DoctorFound(f"{len(report.left)} difference(s) {what}; see the lines above")


def _agent_recovery(env: Env) -> Callable[[], None] | None:
    """The agent's own recovery of jobs and leases, if this home has an agent configuration (else None: the
    catalog is set right without telling other hosts)."""
    from snapport.agent.config import config_path, load_config  # noqa: PLC0415
    from snapport.agent.server import recover_offline  # noqa: PLC0415

    if not config_path(env.home).exists():
        return None
    try:
        config = load_config(env.home, None)
    except SnapportError:
        return None
    return lambda: recover_offline(config, env.home, env.catalog)
