"""Contexts and attributes of a snapshot set (VSS `_VSS_SNAPSHOT_CONTEXT` and `_VSS_VOLUME_SNAPSHOT_ATTRIBUTES`)."""

from __future__ import annotations

import enum

from snapport.errors import UnsupportedContext


class Attr(enum.Flag):
    """Attributes of a snapshot; each member's comment is its VSS meaning."""

    NONE = 0
    PERSISTENT = enum.auto()  # survives the session and reboots
    NO_AUTO_RELEASE = enum.auto()  # not deleted when the session ends; only an explicit delete removes it
    NO_WRITERS = enum.auto()  # no writer takes part: crash-consistent only
    TRANSPORTABLE = enum.auto()  # made to be imported on another host, so never surfaced locally
    CLIENT_ACCESSIBLE = enum.auto()  # a "previous versions" copy for users; never exposed
    NO_AUTORECOVERY = enum.auto()  # read-only at once; writers get no auto-recovery window
    NOT_TRANSACTED = enum.auto()  # skip transaction-manager freeze integration
    DIFFERENTIAL = enum.auto()  # copy-on-write style (exclusive with PLEX)
    PLEX = enum.auto()  # split-mirror / full-clone style (exclusive with DIFFERENTIAL)
    HARDWARE_ASSISTED = enum.auto()  # made by a storage-array provider
    IMPORTED = enum.auto()  # came in through import_snapshot_set, not create
    EXPOSED_LOCALLY = enum.auto()  # mounted on this host
    EXPOSED_REMOTELY = enum.auto()  # shared to other hosts
    NOT_SURFACED = enum.auto()  # not presently exposed anywhere
    ROLLBACK_RECOVERY = enum.auto()  # for rollback or data mining, not backup

    def names(self) -> list[str]:
        """The set flags as kebab-case words, in declaration order (the documents' and JSON spelling)."""
        return [m.name.lower().replace("_", "-") for m in Attr if m.name and m is not Attr.NONE and m in self]

    @classmethod
    def from_names(cls, words: list[str] | tuple[str, ...]) -> Attr:
        """Parse kebab-case words back into flags; an unknown word raises `ValueError`."""
        result = cls.NONE
        for word in words:
            try:
                result |= cls[word.upper().replace("-", "_")]
            except KeyError:
                raise ValueError(f"unknown attribute {word!r}") from None
        return result


# What a requester may add to a context (VSS allows TRANSPORTABLE and DIFFERENTIAL xor PLEX, plus these three).
REQUESTER_MODIFIERS = (
    Attr.TRANSPORTABLE
    | Attr.DIFFERENTIAL
    | Attr.PLEX
    | Attr.NO_AUTORECOVERY
    | Attr.NOT_TRANSACTED
    | Attr.ROLLBACK_RECOVERY
)


class Context(enum.Enum):
    """What a snapshot set is for; each fixes persistence, auto-release and writer involvement."""

    BACKUP = "backup"  # VSS_CTX_BACKUP: auto-release, writers take part (the default)
    APP_BACKUP = "app-backup"  # a backup copy that persists until deleted, writers take part
    FILE_SHARE_BACKUP = "file-share-backup"  # VSS_CTX_FILE_SHARE_BACKUP: auto-release, no writers
    NAS_ROLLBACK = "nas-rollback"  # VSS_CTX_NAS_ROLLBACK: persistent, no writers
    APP_ROLLBACK = "app-rollback"  # VSS_CTX_APP_ROLLBACK: persistent, writers, for rollback or data mining
    CLIENT_ACCESSIBLE = "client-accessible"  # VSS_CTX_CLIENT_ACCESSIBLE: persistent user copies, no writers
    CLIENT_ACCESSIBLE_WRITERS = "client-accessible-writers"  # the same, with writers

    @property
    def base_attrs(self) -> Attr:
        return _CONTEXT_ATTRS[self]

    @property
    def writers_involved(self) -> bool:
        return Attr.NO_WRITERS not in self.base_attrs

    @property
    def auto_release(self) -> bool:
        return Attr.NO_AUTO_RELEASE not in self.base_attrs


_PERSISTENT = Attr.PERSISTENT | Attr.NO_AUTO_RELEASE
_CONTEXT_ATTRS: dict[Context, Attr] = {
    Context.BACKUP: Attr.NONE,
    Context.APP_BACKUP: _PERSISTENT,
    Context.FILE_SHARE_BACKUP: Attr.NO_WRITERS,
    Context.NAS_ROLLBACK: _PERSISTENT | Attr.NO_WRITERS,
    Context.APP_ROLLBACK: _PERSISTENT,
    Context.CLIENT_ACCESSIBLE: _PERSISTENT | Attr.CLIENT_ACCESSIBLE | Attr.NO_WRITERS,
    Context.CLIENT_ACCESSIBLE_WRITERS: _PERSISTENT | Attr.CLIENT_ACCESSIBLE,
}


def context_attrs(context: Context, modifiers: Attr = Attr.NONE) -> Attr:
    """The attributes of a new set: the context's own plus the requester's legal modifiers.

    Raises `UnsupportedContext` for a modifier a requester may not set, DIFFERENTIAL with PLEX, or any
    modifier on a client-accessible context (the VSS rules).
    """
    illegal = modifiers & ~REQUESTER_MODIFIERS
    if illegal:
        raise UnsupportedContext(f"attribute(s) {', '.join(illegal.names())} cannot be requested")
    if Attr.DIFFERENTIAL in modifiers and Attr.PLEX in modifiers:
        raise UnsupportedContext("differential and plex exclude each other")
    if modifiers and Attr.CLIENT_ACCESSIBLE in context.base_attrs:
        raise UnsupportedContext(f"context {context.value} takes no modifiers ({', '.join(modifiers.names())})")
    return context.base_attrs | modifiers
