"""Property tests: model -> XML -> model is the identity, and the writer refuses what XML cannot carry."""

from __future__ import annotations

import uuid
from functools import reduce

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapport.documents import bcd_from_xml, bcd_to_xml, read_document, wmd_from_xml, wmd_to_xml
from snapport.errors import DocumentError
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
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# XML 1.0 cannot carry these, even as character references.
XML_ILLEGAL = "".join(chr(c) for c in range(0x20) if c not in (0x9, 0xA, 0xD)) + "\ufffe\uffff"

xml_chars = st.characters(codec="utf-8", exclude_characters=XML_ILLEGAL)  # utf-8 codec: no surrogates


def xml_text(min_size: int = 0, max_size: int = 16) -> st.SearchStrategy[str]:
    return st.text(xml_chars, min_size=min_size, max_size=max_size)


ODD_SEGMENTS = [
    "with space",
    " lead",
    "trail ",
    "tab\there",
    "new\nline",
    "cr\rlf",
    "back\\slash",
    "*?[]{}",
    "'\"<>&;",
    "&amp;",
    "..hidden",
    ".dot",
    "...",
    "-dash",
    "é",
    "日本語",
    "😀",
    "\u2028\u0085",
    "\x7f\x9f",
]
segment = st.one_of(
    st.sampled_from(ODD_SEGMENTS),
    st.text(st.characters(codec="utf-8", exclude_characters=XML_ILLEGAL + "/"), min_size=1, max_size=10).filter(
        lambda s: s not in (".", "..")
    ),
)
# Raw paths with "." and empty segments: the model normalises them, the documents carry the normal form.
relative_path = st.lists(st.one_of(segment, st.just("."), st.just("")), max_size=5).map("/".join)
volume_path = st.lists(segment, max_size=3).map(lambda parts: "/" + "/".join(parts))
file_pattern = st.one_of(st.sampled_from(["*", "*.db", "app.db-wal", "[ab]?.log"]), segment)

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"


def word(first: str, rest: str, max_size: int, min_size: int = 1) -> st.SearchStrategy[str]:
    """Text over fixed alphabets (much cheaper for hypothesis than `from_regex`)."""
    head = st.text(st.sampled_from(first), min_size=min_size, max_size=min_size)
    return st.tuples(head, st.text(st.sampled_from(rest), max_size=max_size)).map("".join)


host = word(ALNUM + "._:-", ALNUM + "._:-", 40)
identifier = word(ALNUM, ALNUM + "._:-", 30)
provider = word(LOWER, LOWER + "_.-", 20)
fs_type = word(ALNUM + "._+-", ALNUM + "._+-", 16)
fs_uuid = st.one_of(st.uuids().map(str), word(ALNUM + "-", ALNUM + "-", 20, min_size=0))
device = st.one_of(st.just(""), st.just("/dev/loop3"), xml_text())
version = st.integers(0, 9999).map(lambda n: f"1.{n}")


def flags(kind: type[Attr] | type[BackupSchema]) -> st.SearchStrategy[Attr | BackupSchema]:
    members = [m for m in kind if m.value]
    return st.sets(st.sampled_from(members)).map(lambda s: reduce(lambda a, b: a | b, s, kind(0)))


lun = st.builds(
    LunInformation,
    array_id=identifier,
    lun_id=identifier,
    serial=xml_text(),
    size_bytes=st.integers(0, 2**64 - 1),
    vendor=xml_text(),
    product=xml_text(),
)
locator = st.builds(
    Locator,
    provider=provider,
    source=st.none() | lun,
    destination=st.none() | lun,
    properties=st.lists(st.tuples(identifier, xml_text()), max_size=4, unique_by=lambda kv: kv[0]).map(tuple),
)
volume = st.builds(Volume, host=host, mount_point=volume_path, fs_type=fs_type, fs_uuid=fs_uuid, device=device)
snapshot = st.builds(
    SnapshotDescription, snapshot_id=st.uuids(), original_volume=volume, locator=locator, attrs=flags(Attr)
)
snapshot_set = st.builds(
    SnapshotSetDescription,
    set_id=st.uuids(),
    context=st.sampled_from(Context),
    attrs=flags(Attr),
    snapshots=st.lists(snapshot, max_size=64, unique_by=lambda s: s.snapshot_id).map(tuple),
)
selected = st.builds(
    SelectedComponent,
    type=st.sampled_from(ComponentType),
    name=xml_text(min_size=1),
    logical_path=xml_text(),
    backup_succeeded=st.none() | st.booleans(),
    backup_stamp=st.none() | xml_text(),
    previous_backup_stamp=st.none() | xml_text(),
    backup_metadata=st.none() | xml_text(max_size=200),
)
writer_components = st.builds(
    WriterComponents,
    writer_id=st.uuids(),
    class_id=st.uuids(),
    instance_name=xml_text(),
    components=st.lists(selected, max_size=4).map(tuple),
) | st.builds(  # a writer left out of the backup (--on-writer-failure exclude)
    WriterComponents, writer_id=st.uuids(), class_id=st.uuids(), instance_name=xml_text(), excluded=xml_text(min_size=1)
)
backup_components = st.builds(
    BackupComponents,
    backup_type=st.sampled_from(BackupType),
    snapshot_set=snapshot_set,
    select_components=st.booleans(),
    writers=st.lists(writer_components, max_size=3, unique_by=lambda w: w.writer_id).map(tuple),
    originating_host=st.just("") | host,
    version=version,
)

file_spec = st.builds(
    FileSpec,
    volume=volume_path,
    path=relative_path.filter(lambda p: not p.startswith("/")),
    pattern=file_pattern,
    recursive=st.booleans(),
    alternate_location=st.none() | relative_path.filter(lambda p: not p.startswith("/")),
)
specs = st.lists(file_spec, max_size=3).map(tuple)


@st.composite
def component(draw: st.DrawFn) -> Component:
    kind = draw(st.sampled_from(ComponentType))
    database = kind is ComponentType.DATABASE
    return Component(
        type=kind,
        name=draw(xml_text(min_size=1)),
        logical_path=draw(xml_text()),
        caption=draw(xml_text()),
        selectable=draw(st.booleans()),
        selectable_for_restore=draw(st.booleans()),
        files=() if database else draw(specs),
        database_files=draw(specs) if database else (),
        log_files=draw(specs) if database else (),
    )


writer_metadata = st.builds(
    WriterMetadata,
    writer_id=st.uuids(),
    class_id=st.uuids(),
    name=xml_text(min_size=1),
    instance_name=xml_text(),
    usage=st.sampled_from(UsageType),
    components=st.lists(component(), max_size=5, unique_by=lambda c: c.full_path).map(tuple),
    excludes=specs,
    restore_method=st.builds(
        RestoreMethodSpec,
        method=st.sampled_from(RestoreMethod),
        service=xml_text(),
        writer_restore=st.sampled_from(WriterRestore),
        reboot_required=st.booleans(),
    ),
    backup_schema=flags(BackupSchema),
    version=version,
)


@PROPERTY
@given(backup_components)
def test_bcd_round_trip_is_identity(bcd: BackupComponents) -> None:
    data = bcd_to_xml(bcd)
    assert bcd_from_xml(data) == bcd
    assert read_document(data) == bcd
    assert bcd_to_xml(bcd_from_xml(data)) == data  # the serialisation is stable too


@PROPERTY
@given(writer_metadata)
def test_wmd_round_trip_is_identity(wmd: WriterMetadata) -> None:
    data = wmd_to_xml(wmd)
    assert wmd_from_xml(data) == wmd
    assert read_document(data) == wmd
    assert wmd_to_xml(wmd_from_xml(data)) == data


# --- what XML 1.0 cannot carry ---------------------------------------------------------------------------------

illegal_char = st.one_of(st.sampled_from(XML_ILLEGAL), st.sampled_from(["\ud800", "\udfff"]))


@st.composite
def with_illegal(draw: st.DrawFn) -> str:
    text = draw(xml_text())
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(illegal_char) + text[at:]


@settings(max_examples=100, deadline=None)
@given(bad=with_illegal(), field=st.sampled_from(["name", "instance_name", "caption", "service"]))
def test_wmd_writer_refuses_characters_xml_cannot_carry(bad: str, field: str) -> None:
    comp = Component(ComponentType.FILE_GROUP, "c", caption=bad if field == "caption" else "")
    restore = RestoreMethodSpec(service=bad if field == "service" else "")
    names = {"name": "w", "instance_name": ""} | ({field: bad} if field in ("name", "instance_name") else {})
    wmd = WriterMetadata(uuid.uuid4(), uuid.uuid4(), components=(comp,), restore_method=restore, **names)
    with pytest.raises(DocumentError, match=r"(IDENTIFICATION|FILE_GROUP|RESTORE_METHOD) @\w+: character U\+") as info:
        wmd_to_xml(wmd)
    assert "\n" not in str(info.value)


@settings(max_examples=100, deadline=None)
@given(bad=with_illegal(), field=st.sampled_from(["backup_metadata", "backup_stamp", "name"]))
def test_bcd_writer_refuses_characters_xml_cannot_carry(bad: str, field: str) -> None:
    comp = SelectedComponent(ComponentType.DATABASE, **{"name": "db", field: bad})
    wc = WriterComponents(uuid.uuid4(), uuid.uuid4(), components=(comp,))
    sset = SnapshotSetDescription(uuid.uuid4(), Context.BACKUP, Attr.NONE)
    bcd = BackupComponents(BackupType.FULL, sset, writers=(wc,))
    with pytest.raises(DocumentError, match=r"(BACKUP_METADATA|COMPONENT) @\w+: character U\+") as info:
        bcd_to_xml(bcd)
    assert "\n" not in str(info.value)


def _snapshot(n: int) -> SnapshotDescription:
    vol = Volume(host="db1", mount_point=f"/srv/v{n}", fs_type="xfs", fs_uuid=str(uuid.UUID(int=n)))
    return SnapshotDescription(uuid.UUID(int=n + 1), vol, Locator(provider="btrfs", properties=(("subvol", f"s{n}"),)))


def test_a_full_set_of_64_snapshots_round_trips() -> None:
    sset = SnapshotSetDescription(
        uuid.uuid4(), Context.APP_BACKUP, Attr.TRANSPORTABLE, tuple(map(_snapshot, range(64)))
    )
    bcd = BackupComponents(BackupType.COPY, sset)
    assert bcd_from_xml(bcd_to_xml(bcd)) == bcd
