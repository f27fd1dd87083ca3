"""The array world (real XFS volumes on array LUNs), for the reconciliation tests."""

from tests.support.array_world import world

__all__ = ["world"]
