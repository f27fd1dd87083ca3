"""The two XML documents a backup leaves behind: the Backup Components Document and Writer Metadata Documents.

Writing validates against the shipped XSD (snapport never writes what it would refuse). Reading is hardened
(size and depth limits, no DOCTYPE, entities, processing instructions or network), then schema-validated, then
converted to the model; every refusal is a one-line `DocumentError`. See docs/documents.md.
"""

from snapport.documents.bcd import bcd_from_xml, bcd_to_xml
from snapport.documents.hardened import DEFAULT_MAX_BYTES, MAX_DEPTH, MAX_TAGS
from snapport.documents.schema import BCD_NAMESPACE, WMD_NAMESPACE
from snapport.documents.store import (
    BCD_FILE_NAME,
    TRANSPORT_MAX_BYTES,
    WRITERS_DIR_NAME,
    load_documents,
    read_document,
    read_set_documents,
    save_documents,
    validate_file,
)
from snapport.documents.wmd import wmd_from_xml, wmd_to_xml

__all__ = [
    "BCD_FILE_NAME",
    "BCD_NAMESPACE",
    "DEFAULT_MAX_BYTES",
    "MAX_DEPTH",
    "MAX_TAGS",
    "TRANSPORT_MAX_BYTES",
    "WMD_NAMESPACE",
    "WRITERS_DIR_NAME",
    "bcd_from_xml",
    "bcd_to_xml",
    "load_documents",
    "read_document",
    "read_set_documents",
    "save_documents",
    "validate_file",
    "wmd_from_xml",
    "wmd_to_xml",
]
