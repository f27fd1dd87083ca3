"""A writer process that speaks the protocol correctly until freeze, then misbehaves (failure injection only; the
real thing is `snapport writer run`).

    python misbehaving_writer.py REGISTRY_DIR MODE VOLUME

MODE: `hang` (never answers freeze), `crash` (SIGKILLs itself on freeze), `garbage` (answers freeze with a line
that is not JSON). It registers as REGISTRY_DIR/<id>.sock, prints {"socket": ..., "writer_id": ...} when ready,
and claims the whole of VOLUME in its metadata, so that `snapport create VOLUME` takes it in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

from snapport.model import Component, ComponentType, FileSpec, WriterMetadata
from snapport.writers.protocol import LineReader, metadata_to_json, unix_address

CLASS_ID = uuid.uuid5(uuid.NAMESPACE_DNS, "snapport.tests.misbehaving-writer")


def main() -> None:
    registry, mode, volume = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    writer_id = uuid.uuid4()
    path = registry / f"{writer_id}.sock"
    registry.mkdir(mode=0o700, parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.umask(0o177)
    with unix_address(path) as address:
        listener.bind(address)
    listener.listen()
    metadata = WriterMetadata(
        writer_id=writer_id,
        class_id=CLASS_ID,
        name="misbehaving",
        instance_name=f"misbehaving-{mode}",
        components=(
            Component(
                type=ComponentType.FILE_GROUP,
                name="everything",
                files=(FileSpec(volume, "", "*", recursive=True),),
            ),
        ),
    )
    print(json.dumps({"socket": str(path), "writer_id": str(writer_id)}), flush=True)
    while True:
        conn, _ = listener.accept()
        reader = LineReader(conn)
        while (line := reader.read_line()) is not None:
            request = json.loads(line)
            event = request["event"]
            if event == "freeze":
                if mode == "hang":
                    time.sleep(3600)
                elif mode == "crash":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif mode == "garbage":
                    conn.sendall(b"this is not json\n")
                    continue
            reply: dict[str, object] = {"id": request["id"], "ok": True}
            if event == "hello":
                reply |= {
                    "protocol": 1,
                    "kind": "misbehaving",
                    "tier": "application",
                    "writer_id": str(writer_id),
                    "class_id": str(CLASS_ID),
                    "instance_name": metadata.instance_name,
                    "pid": os.getpid(),
                    "uid": os.geteuid(),
                }
            elif event == "identify":
                reply["metadata"] = metadata_to_json(metadata)
            elif event == "post-snapshot":
                reply["metadata"] = {}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        conn.close()


if __name__ == "__main__":
    main()
