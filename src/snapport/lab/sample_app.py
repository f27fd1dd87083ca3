"""The lab's sample application: commits to SQLite without pause, and logs every commit outside the volume.

`python -m snapport.lab.sample_app --db /srv/data/app.db --log LOG` runs until SIGTERM. Each transaction inserts
one row (an increasing counter, its time, a payload and a SHA-256 checksum of the three), deletes the row that
fell out of the retention window (so a lab left up for days does not fill its volume), and commits (WAL,
synchronous=FULL: a commit is on disk when it returns). Then the counter and the time are appended to LOG, which
lives on another volume, so that after a snapshot `last_committed_before(LOG, freeze_started_ns)` names the
counter the copy must hold: a transaction whose commit returned before the freeze began is in a consistent copy.
LOG is rotated to LOG.1 past 16 MiB. `verify(db)` checks a copy: SQLite's integrity check, the window's counters
with no gap, every checksum.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    counter INTEGER PRIMARY KEY,
    written_ns INTEGER NOT NULL,
    payload BLOB NOT NULL,
    checksum TEXT NOT NULL
)
"""
DEFAULT_ROW_BYTES = 512
DEFAULT_KEEP_ROWS = 100_000
LOG_ROTATE_BYTES = 16 << 20


def checksum(counter: int, written_ns: int, payload: bytes) -> str:
    return hashlib.sha256(f"{counter}:{written_ns}:".encode() + payload).hexdigest()


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def run(
    db: Path,
    log: Path,
    *,
    interval_s: float = 0.0,
    row_bytes: int = DEFAULT_ROW_BYTES,
    keep_rows: int = DEFAULT_KEEP_ROWS,
) -> int:
    """Commit rows until SIGTERM/SIGINT; returns the last committed counter. Resumes after an existing ledger."""
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)  # the snapshot's writer may hold the lock a while
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(SCHEMA)
        counter = int(conn.execute("SELECT coalesce(max(counter), 0) FROM ledger").fetchone()[0])
        out = log.open("a", buffering=1)
        try:
            while not stop.requested:
                counter += 1
                payload = os.urandom(row_bytes)
                written = time.time_ns()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO ledger VALUES (?, ?, ?, ?)",
                    (counter, written, payload, checksum(counter, written, payload)),
                )
                conn.execute("DELETE FROM ledger WHERE counter = ?", (counter - keep_rows,))
                conn.execute("COMMIT")
                out.write(json.dumps({"counter": counter, "committed_ns": time.time_ns()}) + "\n")
                if out.tell() > LOG_ROTATE_BYTES:
                    out.close()
                    log.replace(log.with_name(log.name + ".1"))
                    out = log.open("a", buffering=1)
                if interval_s:
                    time.sleep(interval_s)
        finally:
            out.close()
    finally:
        conn.close()
    return counter


def last_committed_before(log: Path, when_ns: int) -> int:
    """The highest counter whose commit had returned by `when_ns` (wall clock, ns); 0 if none had."""
    best = 0
    for path in (log.with_name(log.name + ".1"), log):
        if not path.exists():
            continue
        with path.open() as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if int(entry["committed_ns"]) <= when_ns:
                    best = max(best, int(entry["counter"]))
    return best


@dataclass(frozen=True, slots=True)
class Verification:
    """What `verify` found in a copy of the database."""

    rows: int
    first_counter: int
    last_counter: int
    integrity: str
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and not self.problems


def verify(db: Path, *, keep_rows: int = DEFAULT_KEEP_ROWS) -> Verification:
    """Check a copy (in a writable directory: SQLite may need to replay its WAL): integrity, the retention window
    complete (every counter from the last one back to the window's start, or to 1), every checksum."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        integrity = "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
        first, last, rows = conn.execute(
            "SELECT coalesce(min(counter), 0), coalesce(max(counter), 0), count(*) FROM ledger"
        ).fetchone()
        problems: list[str] = []
        if rows and first != max(1, last - keep_rows + 1):
            problems.append(f"the ledger starts at {first}, not {max(1, last - keep_rows + 1)}")
        if rows != (last - first + 1 if rows else 0):
            problems.append(f"{last - first + 1 - rows} counters missing between {first} and {last}")
        for counter, written, payload, digest in conn.execute(
            "SELECT counter, written_ns, payload, checksum FROM ledger ORDER BY counter"
        ):
            if checksum(counter, written, payload) != digest:
                problems.append(f"row {counter}: checksum mismatch")
                if len(problems) > 20:
                    problems.append("(more problems not listed)")
                    break
        return Verification(
            rows=int(rows),
            first_counter=int(first),
            last_counter=int(last),
            integrity=integrity,
            problems=tuple(problems),
        )
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapport.lab.sample_app", description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="the SQLite database (on the volume to snapshot)")
    parser.add_argument("--log", type=Path, required=True, help="the commit log (on another volume)")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between commits (default: none)")
    parser.add_argument("--row-bytes", type=int, default=DEFAULT_ROW_BYTES)
    parser.add_argument("--keep-rows", type=int, default=DEFAULT_KEEP_ROWS, help="the retention window, in rows")
    args = parser.parse_args(argv)
    if args.keep_rows < 1 or args.row_bytes < 0:
        parser.error("--keep-rows must be at least 1 and --row-bytes at least 0")
    last = run(args.db, args.log, interval_s=args.interval, row_bytes=args.row_bytes, keep_rows=args.keep_rows)
    print(f"stopped after counter {last}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
