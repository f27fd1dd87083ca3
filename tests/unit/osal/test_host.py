"""This host's name: the environment's first, else the system's."""

from __future__ import annotations

import socket

import pytest

from snapport.osal.host import this_host_name


def test_this_host_name_comes_from_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPPORT_HOST", "lab-one")
    assert this_host_name() == "lab-one"
    monkeypatch.delenv("SNAPPORT_HOST")
    assert this_host_name() == socket.gethostname() != "lab-one"
    monkeypatch.setenv("SNAPPORT_HOST", "")  # empty is unset
    assert this_host_name() == socket.gethostname()
