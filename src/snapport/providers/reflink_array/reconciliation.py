"""What a crash can leave in the arrays this host's catalog names, and its removal (the provider's part of
reconciliation; docs/doctor.md).

Only the arrays named by the `array_path` of the catalog's reflink-array locators are looked at: another home's
array on the same machine, even one whose host has the same name, is that home's to judge. In each, in the order
they are removed:

- `presentation`: the manifest records a loop device presented to this host that no longer presents the LUN's
  image (one finding per array, its object the array's path);
- `loop-device`: a loop device on this machine backed by one of the array's images (its own naming) that no
  host's presentation records, nor the catalog;
- `snapshot-lun`: a snapshot LUN of a set this host made (per the catalog; for a set the catalog never recorded,
  when the LUN's parent is presented to this host) whose set has ended or is absent: the LUN is deleted; or one
  presented to this host for an imported set that has ended: only this host's presentation is removed;
- `image`: an image in `luns/` with the array's naming that no LUN describes (a crash between making an image
  and recording it).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from snapport.errors import ProviderError, SnapportError
from snapport.model import Attr
from snapport.osal import loop
from snapport.osal.runner import Runner
from snapport.providers.base import ENDED_STATES, CatalogView, Leftover, Presentations
from snapport.providers.reflink_array.array import LOCK_NAME, Array, Lun

PROVIDER = "reflink-array"
KINDS = ("presentation", "loop-device", "snapshot-lun", "image")
_DELETE, _UNPRESENT = "delete", "unpresent"


def arrays(known: CatalogView, runner: Runner) -> list[Array]:
    """The arrays the catalog's locators name that can be opened now (a missing one has nothing to judge)."""
    paths = {s.locator.property("array_path") for _, s in known.snapshots(PROVIDER)}
    found: dict[Path, Array] = {}
    for where in sorted(p for p in paths if p):
        with contextlib.suppress(SnapportError, OSError):
            array = Array.open(Path(where), runner)
            found.setdefault(array.path, array)
    return list(found.values())


def presentations(known: CatalogView, host: str, runner: Runner) -> Presentations:
    here: set[str] = set()
    elsewhere: set[str] = set()
    for array in arrays(known, runner):
        with contextlib.suppress(SnapportError):
            for lun in array.luns():
                image = str(array.image(lun.id))
                here |= {d for d in lun.devices_on(host) if loop.backing_file(d) == image}
                elsewhere |= {d for h, devices in lun.presented_to if h != host for d in devices}
    return Presentations(here=frozenset(here), elsewhere=frozenset(elsewhere))


def lock_files(known: CatalogView, runner: Runner) -> tuple[Path, ...]:
    return tuple(array.path / LOCK_NAME for array in arrays(known, runner))


def leftovers(known: CatalogView, host: str, runner: Runner) -> tuple[Leftover, ...]:
    found: list[Leftover] = []
    for array in arrays(known, runner):
        with contextlib.suppress(SnapportError):  # a manifest unreadable now: nothing judged in this array
            found += _of_array(array, known, host)
    return tuple(found)


def _of_array(array: Array, known: CatalogView, host: str) -> Iterator[Leftover]:
    where = ("array", str(array.path))
    stale = array.stale_presentations(host)
    if stale:
        what = ", ".join(f"LUN {lun_id} as {device}" for lun_id, device in stale)
        detail = f"recorded as presented to {host} with no loop device: {what}"
        yield Leftover(PROVIDER, "presentation", str(array.path), detail, (where,))
    for device, lun_id in array.stray_devices(known.devices):
        detail = f"backed by {array.image(lun_id)}; no presentation or import records it"
        yield Leftover(PROVIDER, "loop-device", device, detail, (where,))
    luns = array.luns()
    by_id = {lun.id: lun for lun in luns}
    for lun in luns:
        judged = _snapshot_lun(lun, by_id, known, host)
        if judged is not None:
            action, detail = judged
            handle = (where, ("action", action), ("set", lun.snapshot_of_set or ""))
            yield Leftover(PROVIDER, "snapshot-lun", lun.id, detail, handle)
    for image in array.orphan_images():
        detail = "no LUN of the array describes it (a crash between clone and record)"
        yield Leftover(PROVIDER, "image", str(image), detail, (where,))


def _snapshot_lun(lun: Lun, by_id: dict[str, Lun], known: CatalogView, host: str) -> tuple[str, str] | None:
    """(what to do, why) for a snapshot LUN of this host's whose set has ended or is absent; None otherwise."""
    if lun.snapshot_of_set is None:
        return None
    try:
        set_id = uuid.UUID(lun.snapshot_of_set)
    except ValueError:
        return None
    recorded = known.set_of(set_id)
    if recorded is not None and recorded.state not in ENDED_STATES:
        return None  # a live set (or one whose rollback the next creation retries)
    state = recorded.state.value if recorded is not None else "absent from the catalog"
    if recorded is not None:
        made_here = Attr.IMPORTED not in recorded.attrs
    else:
        parent = by_id.get(lun.parent) if lun.parent else None
        made_here = parent is not None and bool(parent.devices_on(host))
    if made_here:
        return _DELETE, f"snapshot of set {set_id}, which is {state} here"
    if lun.devices_on(host):  # imported here: the LUN is its maker's; only this host's presentation is ours
        return _UNPRESENT, f"presented here for set {set_id}, which is {state} here"
    return None


def remove(leftover: Leftover, known: CatalogView, host: str, runner: Runner) -> str:
    if leftover.provider != PROVIDER or leftover.kind not in KINDS:
        raise ProviderError(f"{leftover.kind} {leftover.object} is not a leftover of the {PROVIDER} provider")
    array = Array.open(Path(leftover.get("array")), runner)
    if leftover.kind == "presentation":
        pruned = array.prune_presentations(host)
        return f"forgot {len(pruned)} presentation(s) to {host}"
    if leftover.kind == "loop-device":
        if not array.detach_stray(leftover.object, known.devices):
            return "already gone or recorded meanwhile; left alone"
        return "detached"
    if leftover.kind == "image":
        if not array.remove_orphan_image(Path(leftover.object).stem):
            return "already gone or recorded meanwhile; left alone"
        return "removed the image"
    return _remove_snapshot_lun(array, leftover, known, host)


def _remove_snapshot_lun(array: Array, leftover: Leftover, known: CatalogView, host: str) -> str:
    lun = array.find(leftover.object)
    if lun is None:
        return "already gone"
    judged = _snapshot_lun(lun, {x.id: x for x in array.luns()}, known, host)
    if judged is None or judged[0] != leftover.get("action") or lun.snapshot_of_set != leftover.get("set"):
        return "no longer a leftover (its set is live or it changed meanwhile); left alone"
    if judged[0] == _DELETE:
        if not array.delete_lun(lun.id, unpresent_from=host):
            return "already gone"
        return "deleted the LUN and its image"
    detached = array.unpresent(lun.id, host)
    return f"unpresented from {host} ({', '.join(detached) or 'no device left'})"
