import itertools
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapport.errors import BadState, MaxVolumes, ObjectNotFound
from snapport.model import (
    FINAL_STATES,
    MAX_VOLUMES_PER_SET,
    Attr,
    BackupComponents,
    BackupType,
    ComponentType,
    Context,
    Locator,
    SelectedComponent,
    SetState,
    SnapshotDescription,
    SnapshotSet,
    SnapshotSetDescription,
    Volume,
    WriterComponents,
    allowed_transitions,
    check_transition,
)


def test_happy_path_of_a_backup_set() -> None:
    path = [SetState.PREPARING, SetState.SNAPSHOTTING, SetState.CREATED, SetState.EXPOSED]
    path += [SetState.CREATED, SetState.DELETING, SetState.DELETED]
    for current, new in itertools.pairwise(path):
        check_transition(current, new)


def test_import_path() -> None:
    for current, new in [(SetState.IMPORTING, SetState.CREATED), (SetState.CREATED, SetState.BROKEN)]:
        check_transition(current, new)


@given(st.sampled_from(SetState), st.sampled_from(SetState))
def test_transition_table_is_enforced(current: SetState, new: SetState) -> None:
    if new in allowed_transitions(current):
        check_transition(current, new)
    else:
        with pytest.raises(BadState, match=f"from {current.value} to {new.value}"):
            check_transition(current, new)


def test_final_states_are_final_and_reachable_only_by_rules() -> None:
    assert {SetState.DELETED, SetState.BROKEN, SetState.ABORTED} == FINAL_STATES
    with pytest.raises(BadState, match="final state"):
        check_transition(SetState.DELETED, SetState.CREATED)
    # A created snapshot can no longer be aborted: only deleted.
    with pytest.raises(BadState):
        check_transition(SetState.CREATED, SetState.ABORTED)


def _volume(i: int) -> Volume:
    return Volume(host="one", mount_point=f"/v/{i}", fs_type="xfs", fs_uuid=str(uuid.uuid4()))


def test_at_most_64_volumes_per_set() -> None:
    too_many = tuple(
        SnapshotDescription(snapshot_id=uuid.uuid4(), original_volume=_volume(i), locator=Locator(provider="x"))
        for i in range(MAX_VOLUMES_PER_SET + 1)
    )
    with pytest.raises(MaxVolumes, match="at most 64"):
        SnapshotSetDescription(set_id=uuid.uuid4(), context=Context.BACKUP, attrs=Attr.NONE, snapshots=too_many)
    with pytest.raises(MaxVolumes):
        SnapshotSet(
            id=uuid.uuid4(),
            context=Context.BACKUP,
            attrs=Attr.NONE,
            state=SetState.PREPARING,
            originating_host="one",
            service_host="one",
            snapshots=tuple(object() for _ in range(65)),  # type: ignore[misc]
        )


def test_backup_succeeded_is_set_per_component() -> None:
    writer = uuid.uuid4()
    bcd = BackupComponents(
        backup_type=BackupType.FULL,
        snapshot_set=SnapshotSetDescription(set_id=uuid.uuid4(), context=Context.BACKUP, attrs=Attr.TRANSPORTABLE),
        writers=(
            WriterComponents(
                writer_id=writer,
                class_id=uuid.uuid4(),
                components=(
                    SelectedComponent(type=ComponentType.DATABASE, name="app", logical_path="sqlite"),
                    SelectedComponent(type=ComponentType.FILE_GROUP, name="logs"),
                ),
            ),
        ),
    )
    done = bcd.with_result(writer, "sqlite\\app", succeeded=True)
    assert [c.backup_succeeded for c in done.writers[0].components] == [True, None]
    assert [c.backup_succeeded for c in bcd.writers[0].components] == [None, None]
    with pytest.raises(ObjectNotFound):
        bcd.with_result(writer, "nope", succeeded=True)
    no_writers = SnapshotSetDescription(set_id=uuid.uuid4(), context=Context.FILE_SHARE_BACKUP, attrs=Attr.NO_WRITERS)
    with pytest.raises(BadState, match="no writers"):
        BackupComponents(backup_type=BackupType.FULL, snapshot_set=no_writers).with_result(writer, "x", True)
