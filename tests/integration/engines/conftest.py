"""The array world (volumes on a file-backed array, hosts' homes, leak checks), for the off-host engine tests."""

from tests.support.array_world import world

__all__ = ["world"]
