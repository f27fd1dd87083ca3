"""`forget` (remove a repository's sets by a retention policy, or by id) and `prune` (remove what interrupted
backups and forgets left): docs/retention.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from snapport.cli.env import json_option
from snapport.cli.output import emit_json, table
from snapport.cli.verify import engine_option, repo_option, resolve_set
from snapport.engines import Decision, Forgotten, Policy, RetentionGroup, SetSummary, group_of, open_repository, plan
from snapport.errors import SetInProgress, UsageError


def _keep_options(fn: Any) -> Any:
    help_of = {
        "last": "Keep the N newest sets of each group.",
        "hourly": "Keep the newest set of each of the N latest hours that have one (UTC).",
        "daily": "Keep the newest set of each of the N latest days that have one (UTC).",
        "weekly": "Keep the newest set of each of the N latest ISO weeks that have one.",
        "monthly": "Keep the newest set of each of the N latest months that have one.",
        "yearly": "Keep the newest set of each of the N latest years that have one.",
    }
    for rule in reversed(help_of):
        fn = click.option(
            f"--keep-{rule}", rule, type=click.IntRange(min=0), default=0, metavar="N", help=help_of[rule]
        )(fn)
    return fn


def _entry(summary: SetSummary, group: RetentionGroup, reasons: tuple[str, ...] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "set_id": str(summary.set_id),
        "host": group.host,
        "components": list(group.components),
        "created": summary.created.isoformat() if summary.created else None,
    }
    if reasons is not None:
        entry["reasons"] = list(reasons)
    return entry


@click.command("forget")
@repo_option
@engine_option
@_keep_options
@click.option("--host", "host", default=None, metavar="HOST", help="Only the sets of this production host.")
@click.option(
    "--set", "set_ids", multiple=True, metavar="ID", help="Remove this set (repeatable); instead of --keep-* rules."
)
@click.option("--dry-run", is_flag=True, help="Say what would be kept and removed; remove nothing.")
@json_option
@click.pass_context
def forget(
    ctx: click.Context,
    repo: Path,
    engine_name: str | None,
    host: str | None,
    set_ids: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    last: int,
    hourly: int,
    daily: int,
    weekly: int,
    monthly: int,
    yearly: int,
) -> None:
    """Remove sets from a repository: those no --keep-* rule keeps (per production host and components), or the
    sets named with --set. A set being verified or restored is not removed (reported in use; exit 6)."""
    keep = {"last": last, "hourly": hourly, "daily": daily, "weekly": weekly, "monthly": monthly, "yearly": yearly}
    engine = open_repository(repo, engine_name)
    sets = engine.list()
    if set_ids:
        if any(keep.values()):
            raise UsageError("give either --set or --keep-* rules, not both")
        named = {resolve_set(engine, text) for text in set_ids}
        known = {s.set_id for s in sets}
        if missing := sorted(str(i) for i in named - known):
            raise UsageError(f"no set {', '.join(missing)} in repository {repo}")
        decisions = tuple(Decision(s, group_of(s), s.set_id not in named, ("not named",)) for s in sets)
        if host is not None:
            decisions = tuple(d for d in decisions if d.group.host == host)
        policy = "the sets named"
    else:
        rules = Policy(**keep)
        decisions = plan(sets, rules, host=host)
        policy = str(rules)
    doomed = [d.set.set_id for d in decisions if not d.keep]
    done = Forgotten(()) if dry_run or not doomed else engine.forget(doomed)
    removed = set(doomed if dry_run else done.removed)
    in_use = set(done.in_use)
    kept = [d for d in decisions if d.keep or d.set.set_id in in_use]
    gone = [d for d in decisions if d.set.set_id in removed]
    if as_json:
        emit_json(
            {
                "repository": str(repo),
                "engine": engine.name,
                "policy": policy,
                "dry_run": dry_run,
                "kept": [_entry(d.set, d.group, d.reasons if d.keep else ("in use",)) for d in kept],
                "removed": [_entry(d.set, d.group) for d in gone],
                "in_use": sorted(str(i) for i in in_use),
            }
        )
    else:
        verb = "would remove" if dry_run else "removed"
        table(
            None,
            ["SET", "HOST", "CREATED", "ACTION", "WHY"],
            [
                (
                    d.set.set_id,
                    d.group.host,
                    d.set.created.isoformat(timespec="seconds") if d.set.created else "unreadable",
                    "in use, kept" if d.set.set_id in in_use else ("keep" if d.keep else verb),
                    ", ".join(d.reasons) if d.keep else "",
                )
                for d in decisions
            ],
        )
        click.echo(f"{len(kept)} kept, {len(gone)} {verb} ({policy})")
    if in_use:
        ctx.exit(SetInProgress.exit_code)


@click.command("prune")
@repo_option
@engine_option
@json_option
def prune(repo: Path, engine_name: str | None, as_json: bool) -> None:
    """Remove what interrupted backups and forgets left in a repository (never what a running backup writes)."""
    engine = open_repository(repo, engine_name)
    removed = engine.prune_incomplete()
    if as_json:
        emit_json({"repository": str(repo), "engine": engine.name, "removed": list(removed)})
    else:
        for what in removed:
            click.echo(f"removed {what}")
        click.echo(f"{len(removed)} leftovers removed from {repo}")
