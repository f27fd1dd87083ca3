"""This host's name, as snapport names it in manifests, documents, sets and peers."""

from __future__ import annotations

import os
import socket


def this_host_name() -> str:
    """`$SNAPPORT_HOST` if set, else the system's host name: two homes with two names are two hosts, even on one
    machine (the lab's systemOne and systemTwo)."""
    return os.environ.get("SNAPPORT_HOST") or socket.gethostname()
