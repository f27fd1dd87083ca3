"""The Writer Metadata Document: `WriterMetadata` to XML and back."""

from __future__ import annotations

import uuid

from lxml import etree

from snapport.documents.convert import (
    checked,
    children,
    converting,
    flag,
    local_name,
    new_root,
    required,
    sub,
    the_child,
    yes_no,
)
from snapport.documents.hardened import DEFAULT_MAX_BYTES, parse
from snapport.documents.schema import WMD, check_root, validate
from snapport.model import (
    BackupSchema,
    Component,
    ComponentType,
    FileSpec,
    RestoreMethod,
    RestoreMethodSpec,
    UsageType,
    WriterMetadata,
    WriterRestore,
)
from snapport.model.paths import file_pattern, relative_path, volume_path

_COMPONENT_ELEMENT = {ComponentType.FILE_GROUP: "FILE_GROUP", ComponentType.DATABASE: "DATABASE"}


# --- writing -------------------------------------------------------------------------------------------------


def _write_file_spec(parent: etree._Element, local: str, spec: FileSpec) -> None:
    sub(
        parent,
        local,
        {
            "volume": spec.volume,
            "path": spec.path,
            "filespec": spec.pattern,
            "recursive": yes_no(spec.recursive),
            "alternatePath": spec.alternate_location,
        },
    )


def _write_component(parent: etree._Element, comp: Component) -> None:
    element = sub(
        parent,
        _COMPONENT_ELEMENT[comp.type],
        {
            "componentName": comp.name,
            "logicalPath": comp.logical_path or None,
            "caption": comp.caption or None,
            "selectable": yes_no(comp.selectable),
            "selectableForRestore": yes_no(comp.selectable_for_restore),
        },
    )
    for spec in comp.files:
        _write_file_spec(element, "FILE_LIST", spec)
    for spec in comp.database_files:
        _write_file_spec(element, "DATABASE_FILES", spec)
    for spec in comp.log_files:
        _write_file_spec(element, "DATABASE_LOGFILES", spec)


def wmd_element(wmd: WriterMetadata) -> etree._Element:
    """The document's tree, validated against the schema: snapport never writes what it would refuse to read."""
    root = new_root(WMD, {"version": wmd.version})
    sub(
        root,
        "IDENTIFICATION",
        {
            "writerId": str(wmd.class_id),
            "instanceId": str(wmd.writer_id),
            "friendlyName": wmd.name,
            "instanceName": wmd.instance_name or None,
            "usage": wmd.usage.value,
            "backupSchema": " ".join(wmd.backup_schema.names()) or None,
        },
    )
    locations = sub(root, "BACKUP_LOCATIONS", {})
    for comp in wmd.components:
        _write_component(locations, comp)
    for spec in wmd.excludes:
        _write_file_spec(root, "EXCLUDE_FILES", spec)
    restore = wmd.restore_method
    sub(
        root,
        "RESTORE_METHOD",
        {
            "method": restore.method.value,
            "service": restore.service or None,
            "writerRestore": restore.writer_restore.value,
            "rebootRequired": yes_no(restore.reboot_required),
        },
    )
    validate(root, WMD, writing=True)
    return root


def wmd_to_xml(wmd: WriterMetadata) -> bytes:
    """The Writer Metadata Document as UTF-8 XML; `DocumentError` if the model holds what XML cannot carry."""
    return etree.tostring(wmd_element(wmd), xml_declaration=True, encoding="UTF-8", pretty_print=True)


# --- reading -------------------------------------------------------------------------------------------------


def _read_file_spec(element: etree._Element) -> FileSpec:
    # Each path is checked on its own first, so a refusal names the attribute (the schema checks them too).
    volume = checked(element, "volume", required(element, "volume"), volume_path)
    path = checked(element, "path", required(element, "path"), relative_path)
    pattern = checked(element, "filespec", required(element, "filespec"), file_pattern)
    alternate = element.get("alternatePath")
    if alternate is not None:
        alternate = checked(element, "alternatePath", alternate, relative_path)
    with converting(element):
        return FileSpec(
            volume=volume,
            path=path,
            pattern=pattern,
            recursive=flag(element, "recursive"),
            alternate_location=alternate,
        )


def _read_component(element: etree._Element) -> Component:
    def specs(local: str) -> tuple[FileSpec, ...]:
        return tuple(_read_file_spec(e) for e in children(element, local))

    kind = ComponentType.FILE_GROUP if local_name(element) == "FILE_GROUP" else ComponentType.DATABASE
    files, database_files, log_files = specs("FILE_LIST"), specs("DATABASE_FILES"), specs("DATABASE_LOGFILES")
    with converting(element):
        return Component(
            type=kind,
            name=required(element, "componentName"),
            logical_path=element.get("logicalPath", ""),
            caption=element.get("caption", ""),
            selectable=flag(element, "selectable"),
            selectable_for_restore=flag(element, "selectableForRestore"),
            files=files,
            database_files=database_files,
            log_files=log_files,
        )


def wmd_from_element(root: etree._Element) -> WriterMetadata:
    """Check the root, validate against the schema, then build the model; every refusal is a `DocumentError`."""
    check_root(root, WMD)
    validate(root, WMD)
    ident = the_child(root, "IDENTIFICATION")
    components = tuple(_read_component(c) for c in the_child(root, "BACKUP_LOCATIONS").iterchildren(etree.Element))
    excludes = tuple(_read_file_spec(e) for e in children(root, "EXCLUDE_FILES"))
    method = the_child(root, "RESTORE_METHOD")
    with converting(method):
        restore = RestoreMethodSpec(
            method=RestoreMethod(required(method, "method")),
            service=method.get("service", ""),
            writer_restore=WriterRestore(required(method, "writerRestore")),
            reboot_required=flag(method, "rebootRequired"),
        )
    with converting(ident):
        usage = UsageType(required(ident, "usage"))
        schema = BackupSchema.from_names((ident.get("backupSchema") or "").split())
    with converting(root):
        return WriterMetadata(
            writer_id=uuid.UUID(required(ident, "instanceId")),
            class_id=uuid.UUID(required(ident, "writerId")),
            name=required(ident, "friendlyName"),
            instance_name=ident.get("instanceName", ""),
            usage=usage,
            components=components,
            excludes=excludes,
            restore_method=restore,
            backup_schema=schema,
            version=required(root, "version"),
        )


def wmd_from_xml(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> WriterMetadata:
    """Parse (hardened), validate and convert a Writer Metadata Document."""
    return wmd_from_element(parse(data, max_bytes=max_bytes))
