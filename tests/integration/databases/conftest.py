"""Real database servers on volumes that live on array LUNs (`tests.support.database_world`)."""

from tests.support.array_world import world
from tests.support.database_world import db_world, servers, shared_tmp

__all__ = ["db_world", "servers", "shared_tmp", "world"]
