"""How the CLI speaks: one JSON object on stdout with --json, rich tables otherwise, one line on stderr on error."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from snapport.errors import SnapportError
from snapport.model.export import to_jsonable

# Piped output is read by people and scripts alike: never cut a UUID to fit an 80-column default.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def emit_json(payload: Any) -> None:
    """Write one JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(to_jsonable(payload), sort_keys=True) + "\n")
    sys.stdout.flush()


def progress_line(elapsed_s: float, event: dict[str, Any]) -> None:
    """One progress event as a JSON line on stderr (what a --json verb streams while it works)."""
    print(json.dumps({"elapsed_s": round(elapsed_s, 3), **event}), file=sys.stderr, flush=True)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    stdout.print(t)


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """Print `key: value` lines, aligned (the human form of `show`)."""
    items = [(k, "-" if v is None or v == "" else str(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        stdout.print(f"[bold]{key.ljust(width)}[/bold]  {value}", highlight=False)


def error_line(error: SnapportError, *, as_json: bool) -> str:
    """The one line an error is reported in (a JSON object with --json)."""
    if as_json:
        return json.dumps({"error": error.code, "message": error.message, "advice": error.advice}, sort_keys=True)
    return f"snapport: error [{error.code}]: {error.message} (hint: {error.advice})"
