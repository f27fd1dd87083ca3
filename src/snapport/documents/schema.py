"""The two XSD schemas shipped in the package, and validation of a tree against them."""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lxml import etree

from snapport.documents.hardened import line_of
from snapport.errors import DocumentError

BCD_NAMESPACE = "urn:snapport:backup-components:1"
WMD_NAMESPACE = "urn:snapport:writer-metadata:1"

_CLARK = re.compile(r"\{urn:snapport:[a-z-]+:\d+\}")
_PATTERN_FAILURE = re.compile(r"attribute '(?P<attribute>\w+)': \[facet 'pattern'\].* by the pattern '(?P<regex>.*)'$")
_RELATIVE = "a path relative to its volume: no leading '/', no '..', no empty or '.' segment"
_PATTERN_HINTS = {
    "path": _RELATIVE,
    "alternatePath": _RELATIVE,
    "volume": "an absolute mount point: no '..', no empty or '.' segment, no trailing '/'",
    "mountPoint": "an absolute mount point: no '..', no empty or '.' segment, no trailing '/'",
    "filespec": "one file-name component, no '/'",
}
# An XMLSchema keeps its error log on the instance: one validation at a time.
_LOCK = threading.Lock()


@dataclass(frozen=True)
class DocumentKind:
    """One of the two documents: its root element, namespace, schema file and a name for messages."""

    root: str
    namespace: str
    schema_file: str
    title: str

    @property
    def root_tag(self) -> str:
        return f"{{{self.namespace}}}{self.root}"

    def tag(self, local: str) -> str:
        return f"{{{self.namespace}}}{local}"


BCD = DocumentKind("BACKUP_COMPONENTS", BCD_NAMESPACE, "backup-components.xsd", "backup components document")
WMD = DocumentKind("WRITER_METADATA", WMD_NAMESPACE, "writer-metadata.xsd", "writer metadata document")
KINDS = (BCD, WMD)


def schema_text(kind: DocumentKind) -> bytes:
    """The XSD as shipped in the package (`snapport/documents/schemas/`)."""
    return resources.files("snapport.documents").joinpath("schemas", kind.schema_file).read_bytes()


@functools.cache
def _schema(kind: DocumentKind) -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True)
    return etree.XMLSchema(etree.fromstring(schema_text(kind), parser))


def validate(root: etree._Element, kind: DocumentKind, *, writing: bool = False) -> None:
    """Raise a one-line `DocumentError` with the first schema violation, its line and column."""
    schema = _schema(kind)
    with _LOCK:
        if schema.validate(root):
            return
        log: Any = schema.error_log  # untyped in the lxml stubs
        first = log[0]
        message, line, column = str(first.message), int(first.line), int(first.column)
    message = _CLARK.sub("", message).strip().rstrip(".")
    pattern = _PATTERN_FAILURE.search(message)
    if pattern is not None:  # the regular expression itself helps nobody; say what the value must be
        hint = _PATTERN_HINTS.get(pattern.group("attribute"), "")
        message = message[: pattern.start("regex")].rstrip(" '") + (f" ({hint})" if hint else "")
    if writing:
        raise DocumentError(f"refusing to write an invalid {kind.title}: {message}")
    raise DocumentError(f"not a valid {kind.title}: {message}", line=line or None, column=column or None)


def check_root(root: etree._Element, kind: DocumentKind) -> None:
    """Refuse a root element other than `kind`'s, naming what was found (wrong element, namespace or version)."""
    if root.tag == kind.root_tag:
        return
    qname = etree.QName(root)
    namespace = qname.namespace or ""
    family = kind.namespace.rsplit(":", 1)[0] + ":"
    if qname.localname == kind.root and namespace.startswith(family):
        raise DocumentError(
            f"unsupported {kind.title} version: namespace {namespace}, this snapport reads {kind.namespace}",
            line=line_of(root),
        )
    found = f"{qname.localname} in namespace {namespace}" if namespace else f"{qname.localname} without a namespace"
    raise DocumentError(
        f"not a {kind.title}: root element is {found}, expected {kind.root} in namespace {kind.namespace}",
        line=line_of(root),
    )


def kind_of(root: etree._Element) -> DocumentKind:
    """Which document `root` starts, or a `DocumentError` naming what it is instead."""
    for kind in KINDS:
        if root.tag == kind.root_tag:
            return kind
    qname = etree.QName(root)
    for kind in KINDS:
        if qname.localname == kind.root:
            check_root(root, kind)  # raises, naming the namespace or version problem
    namespace = qname.namespace or "no namespace"
    raise DocumentError(
        f"not a snapport document: root element is {qname.localname} ({namespace}); expected BACKUP_COMPONENTS "
        f"({BCD_NAMESPACE}) or WRITER_METADATA ({WMD_NAMESPACE})",
        line=line_of(root),
    )
