"""The Backup Components Document: `BackupComponents` to XML and back."""

from __future__ import annotations

import uuid

from lxml import etree

from snapport.documents.convert import (
    checked,
    child,
    children,
    converting,
    flag,
    new_root,
    optional_flag,
    required,
    sub,
    the_child,
    yes_no,
)
from snapport.documents.hardened import DEFAULT_MAX_BYTES, line_of, parse
from snapport.documents.schema import BCD, check_root, validate
from snapport.errors import DocumentError
from snapport.model import (
    Attr,
    BackupComponents,
    BackupType,
    ComponentType,
    Context,
    Locator,
    LunInformation,
    SelectedComponent,
    SnapshotDescription,
    SnapshotSetDescription,
    Volume,
    WriterComponents,
)
from snapport.model.paths import volume_path


def _attr_words(attrs: Attr) -> str | None:
    return " ".join(attrs.names()) or None


def _none_if_empty(value: str) -> str | None:
    return value or None


# --- writing -------------------------------------------------------------------------------------------------


def _write_component(parent: etree._Element, comp: SelectedComponent) -> None:
    element = sub(
        parent,
        "COMPONENT",
        {
            "componentType": comp.type.value,
            "componentName": comp.name,
            "logicalPath": _none_if_empty(comp.logical_path),
            "backupSucceeded": None if comp.backup_succeeded is None else yes_no(comp.backup_succeeded),
            "backupStamp": comp.backup_stamp,
            "previousBackupStamp": comp.previous_backup_stamp,
        },
    )
    if comp.backup_metadata is not None:
        sub(element, "BACKUP_METADATA", {"metadata": comp.backup_metadata})


def _write_lun(parent: etree._Element, local: str, lun: LunInformation) -> None:
    holder = sub(parent, local, {})
    sub(
        holder,
        "LUN_INFORMATION",
        {
            "arrayId": lun.array_id,
            "lunId": lun.lun_id,
            "serialNumber": lun.serial,
            "sizeBytes": str(lun.size_bytes),
            "vendorId": lun.vendor,
            "productId": _none_if_empty(lun.product),
        },
    )


def _write_snapshot(parent: etree._Element, snap: SnapshotDescription) -> None:
    element = sub(
        parent, "SNAPSHOT_DESCRIPTION", {"snapshotId": str(snap.snapshot_id), "attributes": _attr_words(snap.attrs)}
    )
    vol = snap.original_volume
    sub(
        element,
        "ORIGINAL_VOLUME",
        {
            "host": vol.host,
            "mountPoint": vol.mount_point,
            "fsType": vol.fs_type,
            "fsUuid": vol.fs_uuid,
            "device": _none_if_empty(vol.device),
        },
    )
    locator = snap.locator
    mapping = sub(element, "LUN_MAPPING", {"provider": locator.provider})
    if locator.source is not None:
        _write_lun(mapping, "SOURCE_LUN", locator.source)
    if locator.destination is not None:
        _write_lun(mapping, "DESTINATION_LUN", locator.destination)
    for name, value in locator.properties:
        sub(mapping, "PROVIDER_PROPERTY", {"name": name, "value": value})


def bcd_element(bcd: BackupComponents) -> etree._Element:
    """The document's tree, validated against the schema: snapport never writes what it would refuse to read."""
    root = new_root(
        BCD,
        {
            "version": bcd.version,
            "backupType": bcd.backup_type.value,
            "selectComponents": yes_no(bcd.select_components),
            "snapshotSetId": str(bcd.set_id),
            "originatingHost": _none_if_empty(bcd.originating_host),
        },
    )
    for wc in bcd.writers:
        element = sub(
            root,
            "WRITER_COMPONENTS",
            {
                "instanceId": str(wc.writer_id),
                "writerId": str(wc.class_id),
                "instanceName": _none_if_empty(wc.instance_name),
                "excluded": wc.excluded,
            },
        )
        for comp in wc.components:
            _write_component(element, comp)
    sset = bcd.snapshot_set
    set_element = sub(
        root,
        "SNAPSHOT_SET_DESCRIPTION",
        {"snapshotSetId": str(sset.set_id), "context": sset.context.value, "attributes": _attr_words(sset.attrs)},
    )
    for snap in sset.snapshots:
        _write_snapshot(set_element, snap)
    validate(root, BCD, writing=True)
    return root


def bcd_to_xml(bcd: BackupComponents) -> bytes:
    """The Backup Components Document as UTF-8 XML; `DocumentError` if the model holds what XML cannot carry."""
    return etree.tostring(bcd_element(bcd), xml_declaration=True, encoding="UTF-8", pretty_print=True)


# --- reading -------------------------------------------------------------------------------------------------


def _attrs(element: etree._Element) -> Attr:
    with converting(element):
        return Attr.from_names((element.get("attributes") or "").split())


def _read_component(element: etree._Element) -> SelectedComponent:
    metadata = child(element, "BACKUP_METADATA")
    with converting(element):
        return SelectedComponent(
            type=ComponentType(required(element, "componentType")),
            name=required(element, "componentName"),
            logical_path=element.get("logicalPath", ""),
            backup_succeeded=optional_flag(element, "backupSucceeded"),
            backup_stamp=element.get("backupStamp"),
            previous_backup_stamp=element.get("previousBackupStamp"),
            backup_metadata=None if metadata is None else required(metadata, "metadata"),
        )


def _read_writer(element: etree._Element) -> WriterComponents:
    components = tuple(_read_component(c) for c in children(element, "COMPONENT"))
    with converting(element):
        return WriterComponents(
            writer_id=uuid.UUID(required(element, "instanceId")),
            class_id=uuid.UUID(required(element, "writerId")),
            instance_name=element.get("instanceName", ""),
            components=components,
            excluded=element.get("excluded"),
        )


def _read_lun(holder: etree._Element | None) -> LunInformation | None:
    if holder is None:
        return None
    element = the_child(holder, "LUN_INFORMATION")
    with converting(element):
        return LunInformation(
            array_id=required(element, "arrayId"),
            lun_id=required(element, "lunId"),
            serial=required(element, "serialNumber"),
            size_bytes=int(required(element, "sizeBytes")),
            vendor=required(element, "vendorId"),
            product=element.get("productId", ""),
        )


def _read_snapshot(element: etree._Element) -> SnapshotDescription:
    vol = the_child(element, "ORIGINAL_VOLUME")
    with converting(vol):
        volume = Volume(
            host=required(vol, "host"),
            mount_point=checked(vol, "mountPoint", required(vol, "mountPoint"), volume_path),
            fs_type=required(vol, "fsType"),
            fs_uuid=required(vol, "fsUuid"),
            device=vol.get("device", ""),
        )
    mapping = the_child(element, "LUN_MAPPING")
    with converting(mapping):
        locator = Locator(
            provider=required(mapping, "provider"),
            source=_read_lun(child(mapping, "SOURCE_LUN")),
            destination=_read_lun(child(mapping, "DESTINATION_LUN")),
            properties=tuple(
                (required(p, "name"), required(p, "value")) for p in children(mapping, "PROVIDER_PROPERTY")
            ),
        )
    with converting(element):
        return SnapshotDescription(
            snapshot_id=uuid.UUID(required(element, "snapshotId")),
            original_volume=volume,
            locator=locator,
            attrs=_attrs(element),
        )


def bcd_from_element(root: etree._Element) -> BackupComponents:
    """Check the root, validate against the schema, then build the model; every refusal is a `DocumentError`."""
    check_root(root, BCD)
    validate(root, BCD)
    set_element = the_child(root, "SNAPSHOT_SET_DESCRIPTION")
    set_id = required(set_element, "snapshotSetId")
    if set_id != required(root, "snapshotSetId"):
        raise DocumentError(
            f"SNAPSHOT_SET_DESCRIPTION names set {set_id}, BACKUP_COMPONENTS set {root.get('snapshotSetId')}",
            line=line_of(set_element),
        )
    snapshots = tuple(_read_snapshot(s) for s in children(set_element, "SNAPSHOT_DESCRIPTION"))
    with converting(set_element):
        snapshot_set = SnapshotSetDescription(
            set_id=uuid.UUID(set_id),
            context=Context(required(set_element, "context")),
            attrs=_attrs(set_element),
            snapshots=snapshots,
        )
    writers = tuple(_read_writer(w) for w in children(root, "WRITER_COMPONENTS"))
    with converting(root):
        return BackupComponents(
            backup_type=BackupType(required(root, "backupType")),
            snapshot_set=snapshot_set,
            select_components=flag(root, "selectComponents"),
            writers=writers,
            originating_host=root.get("originatingHost", ""),
            version=required(root, "version"),
        )


def bcd_from_xml(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> BackupComponents:
    """Parse (hardened), validate and convert a Backup Components Document."""
    return bcd_from_element(parse(data, max_bytes=max_bytes))
