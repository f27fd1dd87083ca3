"""Hostile and broken inputs: each refused with a one-line DocumentError, fast, reading nothing else."""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from snapport.documents import (
    BCD_NAMESPACE,
    DEFAULT_MAX_BYTES,
    MAX_DEPTH,
    WMD_NAMESPACE,
    bcd_from_xml,
    read_document,
    validate_file,
    wmd_from_xml,
)
from snapport.documents import wmd as wmd_module
from snapport.documents.hardened import _parser
from snapport.errors import DocumentError, PathEscape

GOLDEN = Path(__file__).parent / "data" / "golden"
BCD_BYTES = (GOLDEN / "backup-components.xml").read_bytes()
WMD_BYTES = (GOLDEN / "writers" / "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9.xml").read_bytes()
SECRET = "snapport-secret-8b1f0c"


def refused(data: bytes, reader: Callable[..., Any] = read_document, **kwargs: Any) -> DocumentError:
    """The DocumentError `reader` raises for `data`; refused in under a second, with a one-line message."""
    start = time.perf_counter()
    with pytest.raises(DocumentError) as info:
        reader(data, **kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"took {elapsed:.2f}s to refuse"
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert "Traceback" not in message
    return info.value


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 that records whether anybody connected."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def url(sock: socket.socket, path: str = "x") -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}/{path}"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


@pytest.fixture
def trap(tmp_path: Path) -> Path:
    """A FIFO: whoever opens it for reading blocks until a writer comes, so any attempt to read it shows."""
    path = tmp_path / "trap"
    os.mkfifo(path)
    return path


def untouched(trap: Path, action: Callable[[], object]) -> BaseException | None:
    """Run `action` in a thread and fail if it opened `trap`; returns what `action` raised, if anything."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(2.0)
    if thread.is_alive():
        os.close(os.open(trap, os.O_WRONLY | os.O_NONBLOCK))  # release the reader
        thread.join(2.0)
        pytest.fail(f"{trap} was opened")
    return raised[0] if raised else None


# --- entities, DTDs, network ------------------------------------------------------------------------------------


def test_external_entity_to_a_file_is_refused_unread(secret_file: Path, trap: Path) -> None:
    for target in (secret_file.as_uri(), "file:///etc/passwd", trap.as_uri()):
        doc = (
            f'<?xml version="1.0"?>\n<!DOCTYPE BACKUP_COMPONENTS [<!ENTITY xxe SYSTEM "{target}">]>\n'
            f'<BACKUP_COMPONENTS xmlns="{BCD_NAMESPACE}">&xxe;</BACKUP_COMPONENTS>'
        ).encode()
        err = refused(doc)
        assert "DOCTYPE" in str(err)
        assert err.line == 2
        assert SECRET not in str(err) and "root:" not in str(err)
        assert isinstance(untouched(trap, lambda doc=doc: read_document(doc)), DocumentError)


def test_external_entity_over_http_never_connects(listener: socket.socket) -> None:
    doc = (
        f'<!DOCTYPE BACKUP_COMPONENTS [<!ENTITY xxe SYSTEM "{url(listener)}">]>'
        f'<BACKUP_COMPONENTS xmlns="{BCD_NAMESPACE}">&xxe;</BACKUP_COMPONENTS>'
    ).encode()
    assert "DOCTYPE" in str(refused(doc))
    assert nobody_connected(listener)


def test_parameter_entity_over_http_never_connects(listener: socket.socket) -> None:
    doc = f'<!DOCTYPE x [<!ENTITY % p SYSTEM "{url(listener)}"> %p;]><x/>'.encode()
    assert "DOCTYPE" in str(refused(doc))
    assert nobody_connected(listener)


def test_external_dtd_is_refused_and_never_fetched(listener: socket.socket, trap: Path) -> None:
    for system_id in (url(listener, "evil.dtd"), trap.as_uri()):
        doc = (
            f'<?xml version="1.0"?><!DOCTYPE BACKUP_COMPONENTS SYSTEM "{system_id}">'
            f'<BACKUP_COMPONENTS xmlns="{BCD_NAMESPACE}">&s;</BACKUP_COMPONENTS>'
        ).encode()
        assert "DOCTYPE" in str(refused(doc))
        assert isinstance(untouched(trap, lambda doc=doc: read_document(doc)), DocumentError)
    assert nobody_connected(listener)


def test_schema_location_hint_is_never_fetched(listener: socket.socket) -> None:
    """xsi:schemaLocation is only a hint; snapport validates against its own schema and fetches nothing."""
    xsi = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    hint = f'{xsi} xsi:schemaLocation="{BCD_NAMESPACE} {url(listener, "evil.xsd")}"'
    doc = BCD_BYTES.replace(b"<BACKUP_COMPONENTS ", f"<BACKUP_COMPONENTS {hint} ".encode(), 1)
    read_document(doc)
    assert nobody_connected(listener)


def test_xinclude_is_not_processed(listener: socket.socket) -> None:
    include = f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{url(listener)}"/>'
    doc = BCD_BYTES.replace(b"</BACKUP_COMPONENTS>", include.encode() + b"</BACKUP_COMPONENTS>")
    assert "not a valid backup components document" in str(refused(doc))
    assert nobody_connected(listener)


def test_billion_laughs_is_refused_at_once() -> None:
    lol = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    doc = f'<?xml version="1.0"?><!DOCTYPE lolz [{"".join(lol)}]><lolz>&lol9;</lolz>'.encode()
    assert "DOCTYPE" in str(refused(doc))


def test_quadratic_blowup_is_refused_at_once() -> None:
    doc = (
        f'<?xml version="1.0"?><!DOCTYPE kaboom [<!ENTITY a "{"x" * 100_000}">]>'
        f'<BACKUP_COMPONENTS xmlns="{BCD_NAMESPACE}">{"&a;" * 10_000}</BACKUP_COMPONENTS>'
    ).encode()
    assert "DOCTYPE" in str(refused(doc))


def test_lower_case_or_late_doctype_is_refused() -> None:
    assert "DOCTYPE" in str(refused(b"<!-- hi --><!doctype x><x/>"))
    late = BCD_BYTES.replace(b"<WRITER_COMPONENTS", b"<!DOCTYPE x><WRITER_COMPONENTS", 1)
    assert "not well-formed" in str(refused(late))


def test_entity_reference_without_doctype_is_refused() -> None:
    doc = BCD_BYTES.replace(b'originatingHost="systemone"', b'originatingHost="&xxe;"')
    err = refused(doc)
    assert "xxe" in str(err) and err.line == 2


def test_processing_instructions_are_refused() -> None:
    before = BCD_BYTES.replace(b"?>\n", b'?>\n<?xml-stylesheet href="http://127.0.0.1:9/x.xsl"?>\n', 1)
    assert "processing instructions" in str(refused(before))
    inside = BCD_BYTES.replace(b"<SNAPSHOT_SET_DESCRIPTION", b"<?php system('id'); ?><SNAPSHOT_SET_DESCRIPTION")
    assert "processing instructions" in str(refused(inside))
    after = BCD_BYTES + b"<?evil?>"
    assert "processing instructions" in str(refused(after))


# --- structure limits --------------------------------------------------------------------------------------------


def test_deep_nesting_is_refused_early() -> None:
    doc = b"<a>" * 100_000 + b"</a>" * 100_000
    assert f"nested deeper than {MAX_DEPTH}" in str(refused(doc))


def test_nesting_just_past_our_limit_is_refused() -> None:
    depth = MAX_DEPTH  # the root makes it MAX_DEPTH + 1
    doc = f'<BACKUP_COMPONENTS xmlns="{BCD_NAMESPACE}">{"<x>" * depth}{"</x>" * depth}</BACKUP_COMPONENTS>'
    err = refused(doc.encode())
    assert f"nested deeper than {MAX_DEPTH}" in str(err)


def test_oversized_document_is_refused_before_parsing() -> None:
    limit = len(BCD_BYTES) + 100
    padded = BCD_BYTES + b" " * (limit - len(BCD_BYTES))
    assert read_document(padded, max_bytes=limit) is not None  # exactly at the limit: fine
    assert f"larger than the limit of {limit - 1} bytes" in str(refused(padded, max_bytes=limit - 1))
    assert "larger than the limit" in str(refused(padded, bcd_from_xml, max_bytes=limit - 1))
    huge = BCD_BYTES + b" " * (DEFAULT_MAX_BYTES + 1 - len(BCD_BYTES))
    assert f"larger than the limit of {DEFAULT_MAX_BYTES} bytes" in str(refused(huge))


def test_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    real = tmp_path / "big.xml"
    real.write_bytes(BCD_BYTES + b" " * (DEFAULT_MAX_BYTES + 1 - len(BCD_BYTES)))
    sparse = tmp_path / "sparse.xml"
    with sparse.open("wb") as f:
        f.truncate(1 << 40)  # a terabyte of nothing: must be refused from its size, not read
    for path in (real, sparse):
        start = time.perf_counter()
        with pytest.raises(DocumentError, match="larger than the limit") as info:
            validate_file(path)
        assert time.perf_counter() - start < 1.0
        assert str(path) in str(info.value)
    small = tmp_path / "small.xml"
    small.write_bytes(BCD_BYTES)
    with pytest.raises(DocumentError, match="larger than the limit of 100 bytes"):
        validate_file(small, max_bytes=100)


def test_non_regular_files_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.xml"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path, Path("/dev/zero")):
        start = time.perf_counter()
        with pytest.raises(DocumentError, match=r"not a regular file|cannot open"):
            validate_file(path)
        assert time.perf_counter() - start < 1.0
    with pytest.raises(DocumentError, match="cannot open: No such file"):
        validate_file(tmp_path / "missing.xml")


# --- broken encodings and not-XML --------------------------------------------------------------------------------


def test_invalid_utf8_is_refused_with_its_position() -> None:
    doc = BCD_BYTES.replace(b"systemone", b"system\xffone", 1)
    err = refused(doc)
    assert "not valid UTF-8" in str(err) and "0xff" in str(err)
    assert err.line == 2 and err.column is not None


def test_utf16_and_foreign_encodings_are_refused() -> None:
    assert "UTF-8" in str(refused(BCD_BYTES.decode().encode("utf-16")))
    latin = BCD_BYTES.replace(b"encoding='UTF-8'", b"encoding='ISO-8859-1'")
    assert "only UTF-8" in str(refused(latin))


def test_characters_xml_forbids_are_refused() -> None:
    err = refused(BCD_BYTES.replace(b"systemone", b"system\x01one", 1))
    assert "not well-formed" in str(err)
    err = refused(BCD_BYTES.replace(b"systemone", "system\ufffeone".encode(), 1))
    assert "not well-formed" in str(err)


@pytest.mark.parametrize("data", [b"", b"   \n\t  ", b"\xef\xbb\xbf", b"<?xml version='1.0'?>", b"<!-- only -->"])
def test_empty_documents_are_refused(data: bytes) -> None:
    assert "empty document" in str(refused(data))


@pytest.mark.parametrize("cut", [10, 100, len(BCD_BYTES) // 2, len(BCD_BYTES) - 5])
def test_truncated_documents_are_refused(cut: int) -> None:
    err = refused(BCD_BYTES[:cut])
    assert err.line is not None or "declaration" in str(err)


def test_json_is_refused() -> None:
    err = refused(b'{"set_id": "6f1c2b9e", "snapshots": []}')
    assert "not an XML document: it starts with '{'" in str(err)
    assert (err.line, err.column) == (1, 1)


def test_garbage_after_the_root_is_refused() -> None:
    assert "not well-formed" in str(refused(BCD_BYTES + b"<again/>"))


# --- wrong document ----------------------------------------------------------------------------------------------


def test_wrong_root_element_is_refused() -> None:
    assert "root element is html" in str(refused(b"<html><body/></html>"))
    assert "expected BACKUP_COMPONENTS" in str(refused(WMD_BYTES, bcd_from_xml))
    assert "expected WRITER_METADATA" in str(refused(BCD_BYTES, wmd_from_xml))


def test_wrong_namespace_is_refused() -> None:
    none = BCD_BYTES.replace(f' xmlns="{BCD_NAMESPACE}"'.encode(), b"")
    assert "without a namespace" in str(refused(none, bcd_from_xml))
    assert "BACKUP_COMPONENTS (no namespace)" in str(refused(none)) or "without a namespace" in str(refused(none))
    vss = BCD_BYTES.replace(BCD_NAMESPACE.encode(), b"x-schema:#VssComponentMetadata")
    assert "x-schema:#VssComponentMetadata" in str(refused(vss))
    future = BCD_BYTES.replace(BCD_NAMESPACE.encode(), b"urn:snapport:backup-components:2")
    assert "unsupported backup components document version" in str(refused(future))
    swapped = WMD_BYTES.replace(WMD_NAMESPACE.encode(), BCD_NAMESPACE.encode())
    assert "root element is WRITER_METADATA in namespace urn:snapport:backup-components:1" in str(refused(swapped))
    assert "not a snapport document" in str(refused(b"<html/>"))


def test_schema_violation_names_the_first_error_with_its_line() -> None:
    doc = BCD_BYTES.replace(b'componentType="filegroup"', b'componentType="folder"')
    err = refused(doc)
    assert str(err).startswith("not a valid backup components document: Element 'COMPONENT', attribute")
    assert "componentType" in str(err) and "'folder'" in str(err)
    assert err.line == 9
    missing = BCD_BYTES.replace(b' backupType="full"', b"")
    assert "backupType" in str(refused(missing))
    bad_id = BCD_BYTES.replace(b'snapshotId="11111111-2222-4333-8444-555555555555"', b'snapshotId="{not-a-guid}"')
    assert "snapshotId" in str(refused(bad_id))


def test_mismatched_set_ids_are_refused() -> None:
    doc = BCD_BYTES.replace(
        b'SNAPSHOT_SET_DESCRIPTION snapshotSetId="6f1c2b9e', b'SNAPSHOT_SET_DESCRIPTION snapshotSetId="7f1c2b9e'
    )
    assert "names set 7f1c2b9e" in str(refused(doc))


def _with_snapshots(count: int, same_id: bool = False) -> bytes:
    """The golden BCD with its set description holding `count` copies of its first snapshot."""
    root = etree.fromstring(BCD_BYTES)
    sset = root.find(f"{{{BCD_NAMESPACE}}}SNAPSHOT_SET_DESCRIPTION")
    assert sset is not None
    first = copy.deepcopy(sset[0])
    for old in list(sset):
        sset.remove(old)
    for n in range(count):
        snap = copy.deepcopy(first)
        snap.set("snapshotId", str(uuid.UUID(int=0 if same_id else n)))
        sset.append(snap)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def test_more_than_64_snapshots_are_refused() -> None:
    assert bcd_from_xml(_with_snapshots(64)).snapshot_set.snapshots[63].snapshot_id == uuid.UUID(int=63)
    err = refused(_with_snapshots(65))
    assert "SNAPSHOT_DESCRIPTION" in str(err) and "not expected" in str(err)


def test_duplicate_snapshot_ids_are_refused() -> None:
    assert "Duplicate key-sequence" in str(refused(_with_snapshots(2, same_id=True)))


def test_duplicate_components_are_refused_by_the_model() -> None:
    group = WMD_BYTES[WMD_BYTES.index(b"    <FILE_GROUP") : WMD_BYTES.index(b"  </BACKUP_LOCATIONS>")]
    doc = WMD_BYTES.replace(group, group + group)
    err = refused(doc)
    assert str(err).startswith("WRITER_METADATA: writer 'sqlite' lists component(s) twice: app.db")


# --- paths that would escape their volume -------------------------------------------------------------------------

ESCAPES = [
    (b'path="app" filespec="app.db"', b'path="../etc" filespec="app.db"', "path"),
    (b'path="app" filespec="app.db"', b'path="app/../../etc" filespec="app.db"', "path"),
    (b'path="app" filespec="app.db"', b'path="/etc" filespec="app.db"', "path"),
    (
        b'filespec="app.db" recursive="no"',
        b'filespec="app.db" recursive="no" alternatePath="../../root"',
        "alternatePath",
    ),
    (b'filespec="app.db" recursive="no"', b'filespec="app.db" recursive="no" alternatePath="/root"', "alternatePath"),
    (b'filespec="app.db"', b'filespec="../shadow"', "filespec"),
    (
        b'volume="/srv/data" path="app" filespec="app.db"',
        b'volume="/srv/../etc" path="app" filespec="app.db"',
        "volume",
    ),
    (b'volume="/srv/data" path="app" filespec="app.db"', b'volume="srv" path="app" filespec="app.db"', "volume"),
]


@pytest.mark.parametrize(("old", "new", "attribute"), ESCAPES)
def test_escaping_file_specs_are_refused_by_the_schema(old: bytes, new: bytes, attribute: str) -> None:
    err = refused(WMD_BYTES.replace(old, new, 1))
    assert f"attribute '{attribute}'" in str(err)
    assert err.line == 6


@pytest.mark.parametrize(("old", "new", "attribute"), ESCAPES)
def test_escaping_file_specs_are_refused_by_the_model_without_the_schema(
    old: bytes, new: bytes, attribute: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's path validators are the real guard: they hold even if the schema let a path through."""
    monkeypatch.setattr(wmd_module, "validate", lambda *args, **kwargs: None)
    err = refused(WMD_BYTES.replace(old, new, 1))
    assert str(err).startswith(f"FILE_LIST @{attribute}: ")
    assert isinstance(err.__cause__, PathEscape)
    assert err.line == 6


def test_parser_configuration_is_hardened(listener: socket.socket, secret_file: Path, trap: Path) -> None:
    """The second line of defence: a DOCTYPE that got past the prolog scan would still not be acted on."""
    docs = [
        f'<!DOCTYPE x SYSTEM "{url(listener, "x.dtd")}" [<!ENTITY e SYSTEM "{secret_file.as_uri()}">'
        f'<!ENTITY n SYSTEM "{url(listener, "n")}">]><x>&e;&n;</x>',
        f'<!DOCTYPE x SYSTEM "{trap.as_uri()}"><x>&undeclared;</x>',
        f'<!DOCTYPE x [<!ENTITY t SYSTEM "{trap.as_uri()}">]><x>&t;</x>',
    ]
    for doc in docs:
        parsed: list[etree._Element] = []
        assert (
            untouched(trap, lambda doc=doc, parsed=parsed: parsed.append(etree.fromstring(doc.encode(), _parser())))
            is None
        )
        assert SECRET not in etree.tostring(parsed[0]).decode()
    assert nobody_connected(listener)
