"""`snapport docs validate` as a user runs it, fed hostile documents: each refused in under a second, in one
line, with exit code 1, and nothing read from disk or network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parents[1] / "documents" / "data" / "golden"
WMD = next((GOLDEN / "writers").glob("*.xml")).read_bytes()
BCD = (GOLDEN / "backup-components.xml").read_bytes()
SECRET = b"cli-secret-5d2a"


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    sock.setblocking(False)
    return sock


def hostile(secret: Path, port: int) -> dict[str, bytes]:
    laughs = b"".join(
        b'<!ENTITY l%d "&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;">' % ((i,) + (i - 1,) * 10)
        for i in range(1, 10)
    )
    return {
        "file entity": b'<!DOCTYPE d [<!ENTITY x SYSTEM "file://%s">]><WRITER_METADATA>&x;</WRITER_METADATA>'
        % str(secret).encode(),
        "http entity": b'<!DOCTYPE d [<!ENTITY x SYSTEM "http://127.0.0.1:%d/x">]><WRITER_METADATA>&x;</WRITER_METADATA>'
        % port,
        "external dtd": b'<!DOCTYPE d SYSTEM "http://127.0.0.1:%d/d.dtd"><WRITER_METADATA/>' % port,
        "billion laughs": b'<!DOCTYPE d [<!ENTITY l0 "lol">' + laughs + b"]><WRITER_METADATA>&l9;</WRITER_METADATA>",
        "quadratic blow-up": b'<!DOCTYPE d [<!ENTITY a "'
        + b"A" * 100_000
        + b'">]><WRITER_METADATA>'
        + b"&a;" * 10_000
        + b"</WRITER_METADATA>",
        "deep nesting": b"<a>" * 100_000 + b"</a>" * 100_000,
        "invalid utf-8": WMD.replace(b"sqlite", b"sq\xff\xfelite"),
        "empty": b"",
        "truncated": BCD[: len(BCD) // 2],
        "json": b'{"BACKUP_COMPONENTS": {"snapshotSetId": "x"}}',
        "wrong root": b'<?xml version="1.0"?><html xmlns="urn:snapport:writer-metadata:1"/>',
        "path with ..": WMD.replace(b'path="app"', b'path="../../etc"', 1),
        "absolute path": WMD.replace(b'path="app"', b'path="/etc"', 1),
        "alternate location escapes": WMD.replace(
            b'recursive="no"/>', b'recursive="no" alternatePath="../outside"/>', 1
        ),
    }


def test_the_golden_documents_are_valid(tmp_path: Path) -> None:
    for name, data in (("bcd.xml", BCD), ("wmd.xml", WMD)):
        path = tmp_path / name
        path.write_bytes(data)
        proc = subprocess.run(
            [sys.executable, "-m", "snapport", "docs", "validate", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "valid" in proc.stdout


@pytest.mark.parametrize("case", sorted(hostile(Path("/x"), 1)))
def test_hostile_documents_are_refused_fast_in_one_line(case: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    listener = _listener()
    try:
        document = tmp_path / "doc.xml"
        document.write_bytes(hostile(secret, listener.getsockname()[1])[case])
        env = {k: v for k, v in os.environ.items() if k != "SNAPPORT_DEBUG"}
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "snapport", "docs", "validate", str(document)],
            capture_output=True,
            timeout=30,
            env=env,
            check=False,
        )
        elapsed = time.monotonic() - started
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "[INVALID_DOCUMENT]" in lines[0] and "Traceback" not in lines[0]
    if "path" in case or "location" in case:  # refused for the escape itself, not for some other reason
        assert "relative to its volume" in lines[0] and "not allowed" not in lines[0]
    assert SECRET.decode() not in proc.stderr.decode() + proc.stdout.decode()
    assert elapsed < 1.0, f"took {elapsed:.2f} s (interpreter start included)"
