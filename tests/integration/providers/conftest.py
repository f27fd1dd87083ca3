"""The Ceph cluster the `ceph-rbd` tests of this directory run on (started only if one of them runs)."""

from tests.support.ceph import ceph_site

__all__ = ["ceph_site"]
