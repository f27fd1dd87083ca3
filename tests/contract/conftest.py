"""The Ceph cluster the provider suite's `ceph-rbd` case runs on (started only if that case runs)."""

from tests.support.ceph import ceph_site

__all__ = ["ceph_site"]
