"""Small helpers shared by the two documents' writers and readers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lxml import etree

from snapport.documents.hardened import check_xml_text, line_of
from snapport.documents.schema import DocumentKind
from snapport.errors import DocumentError, SnapportError


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def local_name(element: etree._Element) -> str:
    return etree.QName(element).localname


def new_root(kind: DocumentKind, attrs: Mapping[str, str | None]) -> etree._Element:
    """The root element of `kind`, its namespace the default one."""
    nsmap: dict[Any, str] = {None: kind.namespace}  # the lxml stubs do not allow the None key
    root = etree.Element(kind.root_tag, nsmap=nsmap)
    set_attrs(root, attrs)
    return root


def sub(parent: etree._Element, local: str, attrs: Mapping[str, str | None]) -> etree._Element:
    """A child element in the parent's namespace; attributes whose value is None are left out."""
    namespace = etree.QName(parent).namespace
    child = etree.SubElement(parent, f"{{{namespace}}}{local}")
    set_attrs(child, attrs)
    return child


def set_attrs(element: etree._Element, attrs: Mapping[str, str | None]) -> None:
    """Set attributes, refusing characters XML 1.0 cannot carry with a message naming the attribute."""
    for name, value in attrs.items():
        if value is not None:
            element.set(name, check_xml_text(value, f"{local_name(element)} @{name}"))


def required(element: etree._Element, name: str) -> str:
    """An attribute the schema requires (checked again here: the conversion never trusts a missing value)."""
    value = element.get(name)
    if value is None:
        raise DocumentError(f"{local_name(element)} lacks attribute {name}", line=line_of(element))
    return value


def flag(element: etree._Element, name: str) -> bool:
    return required(element, name) == "yes"


def optional_flag(element: etree._Element, name: str) -> bool | None:
    value = element.get(name)
    return None if value is None else value == "yes"


def children(element: etree._Element, local: str) -> list[etree._Element]:
    namespace = etree.QName(element).namespace
    return list(element.iterchildren(f"{{{namespace}}}{local}"))


def child(element: etree._Element, local: str) -> etree._Element | None:
    found = children(element, local)
    return found[0] if found else None


def the_child(element: etree._Element, local: str) -> etree._Element:
    found = child(element, local)
    if found is None:
        raise DocumentError(f"{local_name(element)} lacks element {local}", line=line_of(element))
    return found


def checked(element: etree._Element, name: str, value: str, check: Callable[[str], str]) -> str:
    """`check(value)`, with a refusal (a `PathEscape`, say) turned into a `DocumentError` naming the attribute."""
    try:
        return check(value)
    except (ValueError, SnapportError) as exc:
        raise DocumentError(f"{local_name(element)} @{name}: {exc}", line=line_of(element)) from exc


@contextmanager
def converting(element: etree._Element) -> Iterator[None]:
    """Turn a model's refusal (`ValueError`, `SnapportError`) into a `DocumentError` naming the element."""
    try:
        yield
    except DocumentError:
        raise
    except (ValueError, SnapportError) as exc:
        raise DocumentError(f"{local_name(element)}: {exc}", line=line_of(element)) from exc
