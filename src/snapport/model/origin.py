"""Which flow made a snapshot set, as its backup session records it (the catalog's `sessions.origin`)."""

from __future__ import annotations

import enum


class SetOrigin(enum.StrEnum):
    """The flow that made a set, when it was not a plain `snapport create` (whose sessions record none).

    The value is the stored text: stable across releases.
    """

    OFFHOST_BACKUP = "offhost-backup"  # `snapport offhost-backup`: a backup set handed to a proxy, deleted after
    OFFHOST_DATA_MINING = "offhost-data-mining"  # `offhost-backup --no-backup-session`: a persistent set handed over
