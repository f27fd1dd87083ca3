"""The file-backed array (DESIGN §7): `Array`, the library over an array directory, and its provider."""

from snapport.providers.reflink_array.array import PENDING, READY, Array, Lun, valid_lun_id
from snapport.providers.reflink_array.provider import ReflinkArrayProvider

__all__ = ["PENDING", "READY", "Array", "Lun", "ReflinkArrayProvider", "valid_lun_id"]
