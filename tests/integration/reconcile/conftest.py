"""The array world (real XFS volumes on array LUNs) and a Ceph cluster, for the reconciliation tests."""

from tests.support.array_world import world
from tests.support.ceph import ceph_site

__all__ = ["ceph_site", "world"]
