"""The shipped schemas: packaged with the code, strict, and applied on writing as well as on reading."""

from __future__ import annotations

import uuid
from dataclasses import replace
from importlib import resources

import pytest
from lxml import etree

from snapport.documents import BCD_NAMESPACE, MAX_DEPTH, WMD_NAMESPACE, bcd_to_xml, read_document, wmd_to_xml
from snapport.documents.hardened import MAX_TAGS
from snapport.errors import DocumentError
from snapport.model import (
    Attr,
    BackupComponents,
    BackupType,
    Context,
    Locator,
    LunInformation,
    SnapshotDescription,
    SnapshotSetDescription,
    Volume,
    WriterMetadata,
)


def test_schemas_ship_inside_the_package() -> None:
    schemas = resources.files("snapport.documents").joinpath("schemas")
    for name, namespace in (("backup-components.xsd", BCD_NAMESPACE), ("writer-metadata.xsd", WMD_NAMESPACE)):
        doc = etree.fromstring(schemas.joinpath(name).read_bytes())
        assert doc.get("targetNamespace") == namespace
        etree.XMLSchema(doc)  # compiles


def _bcd(lun: LunInformation | None = None, provider: str = "reflink_array", host: str = "h1") -> BackupComponents:
    snap = SnapshotDescription(
        uuid.uuid4(),
        Volume(host=host, mount_point="/srv", fs_type="xfs", fs_uuid="u"),
        Locator(provider=provider, destination=lun),
    )
    return BackupComponents(BackupType.FULL, SnapshotSetDescription(uuid.uuid4(), Context.BACKUP, Attr.NONE, (snap,)))


@pytest.mark.parametrize(
    ("bcd", "attribute"),
    [
        (_bcd(LunInformation("a", "l", "s", -1)), "sizeBytes"),
        (_bcd(LunInformation("a", "l", "s", 2**64)), "sizeBytes"),
        (_bcd(LunInformation("a", "../../etc/passwd", "s", 1)), "lunId"),
        (_bcd(LunInformation(".hidden", "l", "s", 1)), "arrayId"),
        (_bcd(provider="Reflink Array"), "provider"),
        (_bcd(host="two words"), "host"),
        (_bcd(host=""), "host"),
        (replace(_bcd(), version="2.0"), "version"),
    ],
)
def test_the_writer_refuses_what_the_schema_forbids(bcd: BackupComponents, attribute: str) -> None:
    with pytest.raises(DocumentError, match="refusing to write an invalid backup components document") as info:
        bcd_to_xml(bcd)
    assert f"attribute '{attribute}'" in str(info.value)


def test_the_writer_refuses_an_empty_writer_name() -> None:
    with pytest.raises(DocumentError, match="friendlyName"):
        wmd_to_xml(WriterMetadata(uuid.uuid4(), uuid.uuid4(), ""))


def test_prolog_and_markup_rules() -> None:
    ns = f'xmlns="{WMD_NAMESPACE}"'
    cases = {
        b"<!-- x -->" * 101 + f"<WRITER_METADATA {ns}/>".encode(): "more than 100 comments",
        b"<!-- never closed <WRITER_METADATA/>": "unterminated comment",
        b"  <?xml version='1.0'?><x/>": "misplaced XML declaration",
        b"<?xml version='1.0' <x/>": "unterminated XML declaration",
        b"<![CDATA[x]]><x/>": "markup declarations are not allowed",
        b"<x>" + b"<y/>" * MAX_TAGS + b"</x>": f"more than {MAX_TAGS} tags",
        f"<WRITER_METADATA {ns}>{'<a>' * MAX_DEPTH}{'</a>' * MAX_DEPTH}</WRITER_METADATA>".encode(): "nested deeper",
    }
    for data, reason in cases.items():
        with pytest.raises(DocumentError, match=reason):
            read_document(data)


def test_comments_and_a_bom_are_accepted() -> None:
    data = wmd_to_xml(WriterMetadata(uuid.uuid4(), uuid.uuid4(), "w"))
    decl, rest = data.split(b"\n", 1)
    commented = (
        b"\xef\xbb\xbf" + decl + b"\n<!-- written by hand -->\n" + rest.replace(b"<BACKUP", b"<!-- c --><BACKUP")
    )
    assert read_document(commented) == read_document(data)
