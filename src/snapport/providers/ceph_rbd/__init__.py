"""The `ceph-rbd` provider: RBD images of a Ceph cluster as volumes (docs/providers.md)."""

from snapport.providers.ceph_rbd.cluster import CephConfig, ImageRef, load_config
from snapport.providers.ceph_rbd.provider import CephRbdProvider

__all__ = ["CephConfig", "CephRbdProvider", "ImageRef", "load_config"]
