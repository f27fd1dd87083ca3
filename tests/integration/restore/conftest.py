"""The database tests' world (array volumes, homes and servers in a shared directory), for restores."""

from tests.integration.databases.conftest import db_world, servers, shared_tmp, world

__all__ = ["db_world", "servers", "shared_tmp", "world"]
