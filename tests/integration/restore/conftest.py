"""The database tests' world (array volumes, homes and servers in a shared directory), for restores."""

from tests.support.array_world import world
from tests.support.database_world import db_world, servers, shared_tmp

__all__ = ["db_world", "servers", "shared_tmp", "world"]
