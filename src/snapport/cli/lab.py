"""`snapport lab up|down|status|exec`: the two-host lab (docs/lab.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from snapport.cli.array import parse_size
from snapport.cli.output import emit_json, fields
from snapport.errors import SystemCommandError, UsageError
from snapport.lab import Lab, LabConfig
from snapport.lab import down as lab_down
from snapport.lab import up as lab_up
from snapport.lab.config import DEFAULT_AGENT_PORT, DEFAULT_DIR, DEFAULT_SUBNET, STORAGE, Storage, valid_subnet
from snapport.lab.teardown import Outcome

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout (and progress as JSON lines on stderr)."
)
dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SNAPPORT_LAB_DIR",
    default=DEFAULT_DIR,
    show_default=True,
    help="The lab's directory: its state file, images and homes [env SNAPPORT_LAB_DIR].",
)


def _progress(as_json: bool, kind: str, name: str, detail: str) -> None:
    if as_json:
        print(json.dumps({"type": kind, "what": name, "detail": detail}), file=sys.stderr, flush=True)
    else:
        click.echo(f"{name:<12} {detail}")


@click.group("lab")
def lab() -> None:
    """The two-host lab: systemOne and systemTwo as namespaces on this machine, joined over 198.18.0.0/15."""


@lab.command("up")
@dir_option
@click.option("--suffix", default="", help="Appended to the namespace names, so labs can run side by side.")
@click.option("--subnet", default=str(DEFAULT_SUBNET), show_default=True, help="The hosts' subnet, in 198.18.0.0/15.")
@click.option("--array-size", default="8G", show_default=True, help="The array filesystem's image (sparse).")
@click.option("--data-size", default="1G", show_default=True, help="systemOne's data volume (a LUN).")
@click.option("--agent-port", type=int, default=DEFAULT_AGENT_PORT, show_default=True, help="Each agent's port.")
@click.option(
    "--agents/--no-agents", default=None, help="Start the agents [default: when `snapport agent serve` exists]."
)
@click.option(
    "--storage",
    type=click.Choice(STORAGE),
    default="array",
    show_default=True,
    help="Where the data volume lives: the file-backed array, or an RBD image of a Ceph cluster the lab starts.",
)
@json_option
def up(
    directory: Path,
    suffix: str,
    subnet: str,
    array_size: str,
    data_size: str,
    agent_port: int,
    agents: bool | None,
    storage: Storage,
    as_json: bool,
) -> None:
    """Build the lab; refused while a lab is up in DIR. A failure removes what was made."""
    config = LabConfig(
        directory=directory,
        suffix=suffix,
        subnet=valid_subnet(subnet),
        array_size=parse_size(array_size),
        data_size=parse_size(data_size),
        agent_port=agent_port,
        agents=agents,
        storage=storage,
    )
    made = lab_up(config, on_step=lambda step, detail: _progress(as_json, "step", step, detail))
    if as_json:
        emit_json(made.summary())
    else:
        click.echo(f"lab up in {made.directory}; enter a host with `snapport lab exec systemOne -- CMD...`")


@lab.command("down")
@dir_option
@json_option
def down(directory: Path, as_json: bool) -> None:
    """Remove exactly what `lab up` made (also after it was killed half-way); safe to run again."""

    def report(outcome: Outcome) -> None:
        if as_json:
            _progress(as_json, outcome.result, outcome.what, outcome.detail)
        else:
            click.echo(f"{outcome.result:<13} {outcome.what}" + (f" ({outcome.detail})" if outcome.detail else ""))

    result = lab_down(directory, on_outcome=report)
    if as_json:
        emit_json(result.to_json())
    elif not result.outcomes:
        click.echo(f"no lab in {result.directory}")
    if result.failed:
        raise SystemCommandError(f"lab down could not remove: {'; '.join(result.failed_lines())}")


@lab.command("status")
@dir_option
@json_option
def status(directory: Path, as_json: bool) -> None:
    """Show the lab's hosts, addresses, homes and processes."""
    summary = Lab.open(directory).summary()
    if as_json:
        emit_json(summary)
        return
    fields([("dir", summary["dir"]), ("status", summary["status"]), ("array", summary["array"])])
    for name, host in summary["hosts"].items():
        procs = ", ".join(
            f"{role} pid {p['pid']} ({'running' if p['running'] else 'gone'})" for role, p in host["processes"].items()
        )
        click.echo("")
        fields(
            [
                ("host", name),
                ("netns", host["netns"]),
                ("address", host["address"]),
                ("home", host["home"]),
                ("processes", procs),
            ]
        )
    for note in summary["notes"]:
        click.echo(f"note: {note}")


@lab.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@dir_option
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(directory: Path, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND on HOST (systemOne or systemTwo): its namespaces, SNAPPORT_HOME and SNAPPORT_HOST, in the
    current directory (the hosts share the machine's root filesystem).

    Put `--` before a command that has options: `snapport lab exec systemOne -- ls -l /srv/data`.
    """
    if command[:1] == ("--",):  # click keeps the separator once HOST has been taken
        command = command[1:]
    if not command:
        raise UsageError("give the command to run after `--`")
    argv = Lab.open(directory).host(host).command(command, cwd=Path.cwd())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)  # noqa: S606  (no shell: the exact argv; its own exit status and terminal)
