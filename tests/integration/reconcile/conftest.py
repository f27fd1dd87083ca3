"""The coordinator's array world (real XFS volumes on array LUNs), for the reconciliation tests."""

from tests.integration.coordinator.conftest import world

__all__ = ["world"]
