"""The array world of the coordinator tests, shared: volumes on a file-backed array, hosts' homes, leak checks."""

from tests.integration.coordinator.conftest import world

__all__ = ["world"]
