"""The array world (real XFS volumes on array LUNs) the one-host coordinator tests run in."""

from tests.support.array_world import world

__all__ = ["world"]
