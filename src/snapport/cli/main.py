"""The `snapport` command: parses, calls the domain, prints. No work happens here."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import click

from snapport import __version__
from snapport.cli.env import Env
from snapport.cli.output import error_line
from snapport.errors import SnapportError, UsageError

# Verb -> "module:attribute". Loaded when the verb runs, so a verb pays only for what it uses (`docs validate`
# never imports the catalog or any plugin).
VERBS = {
    "array": "snapport.cli.array:array",
    "rbd": "snapport.cli.rbd:rbd",
    "create": "snapport.cli.shadow:create",
    "import": "snapport.cli.shadow:import_",
    "expose": "snapport.cli.shadow:expose",
    "map": "snapport.cli.shadow:map_",
    "unexpose": "snapport.cli.shadow:unexpose",
    "delete": "snapport.cli.shadow:delete",
    "break": "snapport.cli.shadow:break_",
    "complete": "snapport.cli.shadow:complete",
    "list": "snapport.cli.sets:list_sets",
    "show": "snapport.cli.sets:show",
    "writers": "snapport.cli.writer:writers",
    "writer": "snapport.cli.writer:writer",
    "docs": "snapport.cli.docs:docs",
    "verify": "snapport.cli.verify:verify",
    "backups": "snapport.cli.verify:backups",
    "forget": "snapport.cli.retention:forget",
    "prune": "snapport.cli.retention:prune",
    "agent": "snapport.cli.agent:agent",
    "certs": "snapport.cli.certs:certs",
    "jobs": "snapport.cli.agent:jobs",
    "lab": "snapport.cli.lab:lab",
    "offhost-backup": "snapport.cli.offhost:offhost_backup",
    "demo": "snapport.cli.demo:demo",
    "restore": "snapport.cli.restore:restore",
    "revert": "snapport.cli.restore:revert",
    "doctor": "snapport.cli.doctor:doctor",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(VERBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = VERBS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="snapport", message="%(prog)s %(version)s")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SNAPPORT_HOME",
    default=None,
    help="This host's state directory [env SNAPPORT_HOME; default /var/lib/snapport].",
)
@click.option("--catalog", "catalog", envvar="SNAPPORT_CATALOG_URL", default=None, help="Catalog URL (SQLAlchemy).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, catalog: str | None, debug: bool) -> None:
    """Transportable, application-consistent shadow copies for Linux."""
    ctx.obj = Env(home, catalog)
    ctx.call_on_close(ctx.obj.close)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors become one line on stderr and a documented exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    debug = "--debug" in args or bool(os.environ.get("SNAPPORT_DEBUG"))
    try:
        rc = cli.main(args=args, prog_name="snapport", standalone_mode=False)
    except SnapportError as error:
        if debug:
            traceback.print_exc()
        print(error_line(error, as_json=as_json), file=sys.stderr)
        return error.exit_code
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        print("snapport: interrupted", file=sys.stderr)
        return 130
    except click.ClickException as error:
        usage = UsageError(error.format_message())
        print(error_line(usage, as_json=as_json), file=sys.stderr)
        return usage.exit_code
    except Exception as error:  # a bug: still one line, unless the user asked for the traceback
        if debug:
            traceback.print_exc()
        internal = SnapportError(f"internal error: {type(error).__name__}: {error}")
        print(error_line(internal, as_json=as_json), file=sys.stderr)
        return internal.exit_code
    return rc if isinstance(rc, int) else 0
