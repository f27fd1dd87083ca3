"""`snapport demo`: the two-host lab end to end (the README's main job); the run is `snapport.lab.demo`'s."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from snapport.cli.env import json_option


@click.command("demo")
@click.option(
    "--keep-repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the backup repository in DIR (absent or empty) [default: a temporary one, removed].",
)
@click.option(
    "--storage",
    type=click.Choice(["array", "ceph"]),
    default="array",
    show_default=True,
    help="The data volume on the file-backed array, or on an RBD image of a Ceph cluster the lab starts.",
)
@json_option
def demo(keep_repo: Path | None, storage: str, as_json: bool) -> None:
    """Run the two-host lab end to end: an off-host backup from systemOne to systemTwo, checked and timed."""
    from snapport.lab.demo import run_demo  # noqa: PLC0415

    def say(text: str) -> None:
        if as_json:
            print(json.dumps({"demo": text}), file=sys.stderr, flush=True)
        else:
            click.echo(text, err=True)

    report = run_demo(keep_repo, say, storage)
    summary = report.summary()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        backup, check = report.backup, report.check
        lines = [
            f"set {summary['set_id']}",
            f"  freeze window      {summary['freeze_window_ms']:8.1f} ms   (writers frozen on systemOne)",
            f"  import             {summary['import_ms']:8.1f} ms   (systemTwo presents the snapshot, on {storage})",
            f"  backup             {backup.backup_s or 0:8.2f} s    {backup.bytes / 2**20:.1f} MiB at "
            f"{summary['backup_mib_s']} MiB/s",
            f"  CPU on systemOne   {summary['systemone_cpu_s']:8.3f} s    (its agent, whole off-host backup)",
            f"  CPU on systemTwo   {summary['systemtwo_cpu_s']:8.3f} s    (its agent: import, backup, verify)",
            f"  consistent         {'yes' if check.consistent else 'NO'}: last row {check.last_counter}, "
            f"last committed before the freeze {check.committed_before_freeze}",
        ]
        lines += [f"    {phase['phase']:<22} {phase.get('duration_s', 0):7.2f} s" for phase in backup.phases]
        if keep_repo is not None:
            lines.append(f"  repository kept in {keep_repo}")
        click.echo("\n".join(lines))
    if not report.check.consistent:
        problems = "; ".join(report.check.problems)
        click.echo(f"snapport: the backup of set {summary['set_id']} is not consistent: {problems}", err=True)
        raise click.exceptions.Exit(1)
