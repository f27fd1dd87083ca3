"""Hardened XML reading: nothing in a document can make snapport read a file, open a socket or blow up.

Order: size limit, UTF-8, a prolog scan that refuses a DOCTYPE (so no entity or DTD ever reaches the parser),
then the parse, where libxml2 itself stops at 256 levels, then C-level checks for depth beyond MAX_DEPTH,
processing instructions and entity nodes. As a second line of defence the parser resolves no entities, loads
no DTD, has no network, and its resolver answers any request for an external resource with nothing.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from snapport.errors import DocumentError

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_TAGS = 500_000  # '<' characters: a cheap bound on elements, so parsing a document stays well under a second

# What XML 1.0 cannot carry, even escaped: C0 controls but tab, LF and CR; surrogates; U+FFFE and U+FFFF.
_ILLEGAL_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_WHITESPACE = re.compile(r"[ \t\r\n]*")
_MAX_PROLOG_COMMENTS = 100  # comments before the root element; each costs a Python loop turn
_XML_DECL = re.compile(r"<\?xml[ \t\r\n]")
_ENCODING = re.compile(r"""encoding[ \t\r\n]*=[ \t\r\n]*(["'])(?P<name>[^"']*)\1""")
_LXML_WHERE = re.compile(r",? line \d+, column \d+$")


def check_xml_text(value: str, where: str) -> str:
    """`value` unchanged, or a `DocumentError` naming `where` and the first character XML 1.0 cannot carry."""
    bad = _ILLEGAL_XML_CHAR.search(value)
    if bad is not None:
        raise DocumentError(
            f"refusing to write {where}: character U+{ord(bad.group()):04X} at position {bad.start()} "
            "cannot be carried by XML 1.0"
        )
    return value


def line_of(node: object) -> int | None:
    """The source line of an lxml node, if known (the lxml stubs do not type `sourceline`)."""
    line = getattr(node, "sourceline", None)
    return line if isinstance(line, int) and line > 0 else None


def _where(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column of character offset `pos`."""
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _syntax_error(exc: etree.XMLSyntaxError) -> DocumentError:
    """One-line `DocumentError` from lxml's error, with its line and column."""
    log: Any = exc.error_log  # untyped in the lxml stubs
    entry = log.last_error if len(log) else None
    message = str(entry.message) if entry is not None else str(exc.msg)
    line = int(entry.line) if entry is not None else exc.lineno
    column = int(entry.column) if entry is not None else None
    message = _LXML_WHERE.sub("", message.strip())
    if "Excessive depth" in message:
        message = f"elements nested deeper than {MAX_DEPTH} levels"
    else:
        message = f"not well-formed XML: {message}"
    return DocumentError(message, line=line or None, column=column or None)


def _check_prolog(text: str) -> None:
    """Refuse a DOCTYPE, a processing instruction, a non-UTF-8 declaration, or something that is not XML.

    Only the prolog (what may precede the root element) is scanned, with `str.find`: linear on any input.
    """
    pos = 1 if text.startswith("\ufeff") else 0
    if _XML_DECL.match(text, pos):
        end = text.find("?>", pos)
        if end < 0 or "<" in text[pos + 1 : end]:
            raise DocumentError("unterminated XML declaration", line=1, column=pos + 1)
        encoding = _ENCODING.search(text, pos, end)
        if encoding is not None and encoding.group("name").lower() not in ("utf-8", "utf8"):
            raise DocumentError(f"only UTF-8 documents are accepted, this one declares {encoding.group('name')!r}")
        pos = end + 2
    for _ in range(_MAX_PROLOG_COMMENTS + 1):
        ws = _WHITESPACE.match(text, pos)
        pos = ws.end() if ws is not None else pos
        if not text.startswith("<!--", pos):
            break
        end = text.find("-->", pos + 4)
        if end < 0:
            raise DocumentError("unterminated comment before the root element", line=_where(text, pos)[0])
        pos = end + 3
    else:
        raise DocumentError(f"more than {_MAX_PROLOG_COMMENTS} comments before the root element")
    rest = text[pos : pos + 16]
    line, column = _where(text, pos)
    if not rest:
        raise DocumentError("empty document: no root element", line=line, column=column)
    if rest.upper().startswith("<!DOCTYPE"):
        raise DocumentError("DOCTYPE declarations are not allowed (no DTD, no entities)", line=line, column=column)
    if rest.startswith("<!"):
        raise DocumentError("markup declarations are not allowed before the root element", line=line, column=column)
    if rest.startswith("<?"):
        if rest[2:5].lower() == "xml" and rest[5:6] in ("", " ", "\t", "\r", "\n", "?"):
            raise DocumentError("misplaced XML declaration", line=line, column=column)
        raise DocumentError("processing instructions are not allowed", line=line, column=column)
    if not rest.startswith("<"):
        raise DocumentError(f"not an XML document: it starts with {rest[:1]!r}", line=line, column=column)


_PARSER_OPTIONS: dict[str, Any] = {
    "encoding": "utf-8",
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,  # libxml2 then refuses more than 256 levels itself, before building them
    "remove_comments": True,
    "remove_pis": False,  # kept, so that they can be refused
    "collect_ids": False,
}
# Evaluated in C: the elements deeper than MAX_DEPTH (libxml2 has already refused anything past 256 levels).
_TOO_DEEP = "/*" + "/*" * MAX_DEPTH


class _NothingResolver(etree.Resolver):
    """Answers every request for an external resource (DTD, entity, by file or URL) with nothing."""

    def resolve(self, system_url: str, public_id: str, context: object = None) -> Any:
        return self.resolve_string("", context, base_url=None)


def _parser() -> etree.XMLParser:
    parser = etree.XMLParser(**_PARSER_OPTIONS)
    parser.resolvers.add(_NothingResolver())
    return parser


def parse(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """The root element of `data`, or a one-line `DocumentError` saying why the document is refused."""
    if len(data) > max_bytes:
        raise DocumentError(f"document is larger than the limit of {max_bytes} bytes")
    if not data.strip():
        raise DocumentError("empty document")
    if data.count(b"<") > MAX_TAGS:
        raise DocumentError(f"document has more than {MAX_TAGS} tags")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DocumentError(
            f"not valid UTF-8: byte 0x{data[exc.start]:02x}: {exc.reason}", line=line, column=column
        ) from None
    _check_prolog(text)

    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise _syntax_error(exc) from None
    docinfo: Any = root.getroottree().docinfo  # `doctype` is missing from the lxml stubs
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise DocumentError("DOCTYPE declarations are not allowed (no DTD, no entities)")
    deep = root.xpath(_TOO_DEEP)
    if isinstance(deep, list) and deep:
        raise DocumentError(f"elements nested deeper than {MAX_DEPTH} levels", line=line_of(deep[0]))
    outside = [*root.itersiblings(preceding=True), *root.itersiblings()]  # comments are gone: PIs only
    pi = outside[0] if outside else next(root.iter(etree.PI), None)
    if pi is not None:
        raise DocumentError("processing instructions are not allowed", line=line_of(pi))
    entity = next(root.iter(etree.Entity), None)
    if entity is not None:
        raise DocumentError(f"entity references are not allowed ({entity.text})", line=line_of(entity))
    return root
