"""Golden documents checked into data/golden/: the writer's exact output, and what the reader makes of it."""

from __future__ import annotations

import uuid
from importlib import resources
from pathlib import Path

from lxml import etree

from snapport.documents import (
    BCD_NAMESPACE,
    WMD_NAMESPACE,
    bcd_from_xml,
    bcd_to_xml,
    load_documents,
    validate_file,
    wmd_from_xml,
    wmd_to_xml,
)
from snapport.model import (
    Attr,
    BackupComponents,
    BackupSchema,
    BackupType,
    Component,
    ComponentType,
    Context,
    FileSpec,
    Locator,
    LunInformation,
    RestoreMethod,
    RestoreMethodSpec,
    SelectedComponent,
    SnapshotDescription,
    SnapshotSetDescription,
    UsageType,
    Volume,
    WriterComponents,
    WriterMetadata,
    WriterRestore,
    context_attrs,
)

GOLDEN = Path(__file__).parent / "data" / "golden"

SET_ID = uuid.UUID("6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6b")
PG_WRITER = uuid.UUID("0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d")
PG_CLASS = uuid.UUID("d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6")
SQLITE_WRITER = uuid.UUID("5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9")
SQLITE_CLASS = uuid.UUID("b7c8d9e0-f1a2-4b3c-9d4e-5f6a7b8c9d0e")

PG_WMD = WriterMetadata(
    writer_id=PG_WRITER,
    class_id=PG_CLASS,
    name="postgresql",
    instance_name="main cluster",
    usage=UsageType.USER_DATA,
    components=(
        Component(
            type=ComponentType.DATABASE,
            name="cluster",
            logical_path="pg15",
            caption="PostgreSQL 15 « main » cluster",
            database_files=(FileSpec("/srv/pg", "data", "*", recursive=True),),
            log_files=(FileSpec("/srv/pg", "data/pg_wal", "*", recursive=True, alternate_location="restore/pg_wal"),),
        ),
    ),
    excludes=(
        FileSpec("/srv/pg", "data", "postmaster.pid"),
        FileSpec("/srv/pg", "data/pg_stat_tmp", "*", recursive=True),
    ),
    restore_method=RestoreMethodSpec(
        method=RestoreMethod.STOP_RESTORE_START,
        service="postgresql@15-main.service",
        writer_restore=WriterRestore.IF_REPLACE_FAILS,
    ),
    backup_schema=BackupSchema.COPY | BackupSchema.LOG,
)

SQLITE_WMD = WriterMetadata(
    writer_id=SQLITE_WRITER,
    class_id=SQLITE_CLASS,
    name="sqlite",
    components=(
        Component(
            type=ComponentType.FILE_GROUP,
            name="app.db",
            caption="Application database",
            files=(FileSpec("/srv/data", "app", "app.db"), FileSpec("/srv/data", "app", "app.db-wal")),
        ),
    ),
)

BCD = BackupComponents(
    backup_type=BackupType.FULL,
    snapshot_set=SnapshotSetDescription(
        set_id=SET_ID,
        context=Context.APP_BACKUP,
        attrs=context_attrs(Context.APP_BACKUP, Attr.TRANSPORTABLE),
        snapshots=(
            SnapshotDescription(
                snapshot_id=uuid.UUID("11111111-2222-4333-8444-555555555555"),
                original_volume=Volume(
                    host="systemone",
                    mount_point="/srv/pg",
                    fs_type="xfs",
                    fs_uuid="3f0e7d2a-9b1c-4e8f-a6d5-2c4b8e1f0a93",
                    device="/dev/loop3",
                ),
                locator=Locator(
                    provider="reflink_array",
                    source=LunInformation("array-7c1d", "lun-0003", "SNP0003", 8 * 1024**3, product="file LUN"),
                    destination=LunInformation("array-7c1d", "lun-0011", "SNP0011", 8 * 1024**3, product="file LUN"),
                ),
                attrs=Attr.TRANSPORTABLE | Attr.HARDWARE_ASSISTED | Attr.PLEX,
            ),
            SnapshotDescription(
                snapshot_id=uuid.UUID("66666666-7777-4888-9999-aaaaaaaaaaaa"),
                original_volume=Volume(
                    host="systemone",
                    mount_point="/srv/data",
                    fs_type="btrfs",
                    fs_uuid="c0ffee00-1234-4abc-8def-0123456789ab",
                ),
                locator=Locator(
                    provider="btrfs",
                    properties=(("subvolume", ".snapshots/6f1c2b9e"), ("generation", "4711")),
                ),
                attrs=Attr.TRANSPORTABLE | Attr.DIFFERENTIAL,
            ),
        ),
    ),
    select_components=True,
    writers=(
        WriterComponents(
            writer_id=PG_WRITER,
            class_id=PG_CLASS,
            instance_name="main cluster",
            components=(
                SelectedComponent(
                    type=ComponentType.DATABASE,
                    name="cluster",
                    logical_path="pg15",
                    backup_stamp="0/3000028",
                    backup_metadata="START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n"
                    "CHECKPOINT LOCATION: 0/3000060\nLABEL: snapport 6f1c2b9e\n",
                ),
            ),
        ),
        WriterComponents(
            writer_id=SQLITE_WRITER,
            class_id=SQLITE_CLASS,
            components=(SelectedComponent(type=ComponentType.FILE_GROUP, name="app.db", backup_succeeded=True),),
        ),
    ),
    originating_host="systemone",
)

BCD_FILE = GOLDEN / "backup-components.xml"
WMD_FILES = {w.writer_id: GOLDEN / "writers" / f"{w.writer_id}.xml" for w in (PG_WMD, SQLITE_WMD)}


def test_writer_output_is_the_golden_bcd() -> None:
    assert bcd_to_xml(BCD) == BCD_FILE.read_bytes()


def test_writer_output_is_the_golden_wmd() -> None:
    for wmd in (PG_WMD, SQLITE_WMD):
        assert wmd_to_xml(wmd) == WMD_FILES[wmd.writer_id].read_bytes()


def test_golden_documents_read_back() -> None:
    assert bcd_from_xml(BCD_FILE.read_bytes()) == BCD
    assert wmd_from_xml(WMD_FILES[PG_WRITER].read_bytes()) == PG_WMD
    assert validate_file(BCD_FILE) == BCD
    assert validate_file(WMD_FILES[SQLITE_WRITER]) == SQLITE_WMD
    assert load_documents(GOLDEN) == (BCD, sorted([PG_WMD, SQLITE_WMD], key=lambda w: str(w.writer_id)))


def _shipped_schema(name: str) -> etree.XMLSchema:
    """The XSD as installed with the package, loaded with plain lxml (independent of snapport's reader)."""
    data = resources.files("snapport.documents").joinpath("schemas", name).read_bytes()
    return etree.XMLSchema(etree.fromstring(data))


def test_golden_documents_are_valid_against_the_shipped_schemas() -> None:
    bcd_schema = _shipped_schema("backup-components.xsd")
    wmd_schema = _shipped_schema("writer-metadata.xsd")
    assert bcd_schema.validate(etree.parse(BCD_FILE)), bcd_schema.error_log
    for path in WMD_FILES.values():
        assert wmd_schema.validate(etree.parse(path)), wmd_schema.error_log
    assert etree.parse(BCD_FILE).getroot().tag == f"{{{BCD_NAMESPACE}}}BACKUP_COMPONENTS"
    assert etree.parse(WMD_FILES[PG_WRITER]).getroot().tag == f"{{{WMD_NAMESPACE}}}WRITER_METADATA"
