"""Run inside a lab host: call one of systemOne's protocol routes with a given certificate; print the outcome."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from snapport.agent.client import AgentClient, ClientTls
from snapport.errors import SnapportError


async def main(address: str, certs: str, name: str, method: str, path: str) -> None:
    directory = Path(certs)
    tls = ClientTls(directory / f"{name}.crt", directory / f"{name}.key", directory / "ca.crt")
    async with AgentClient(address, tls, timeout_s=10) as client:
        try:
            await client.call_json(method, path)
            print(json.dumps({"ok": True}))
        except SnapportError as exc:
            print(json.dumps({"ok": False, "error": exc.code}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
