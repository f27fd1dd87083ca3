"""The site's certificates: a private CA, host certificates signed by it, and the identity a peer's certificate
carries.

Identity, parsed strictly (`identity_of`):

- the host is the subject's one Common Name (a host name, never an address);
- the role is the one SAN URI `urn:snapport:role:<role>` (`production` or `proxy`);
- the certificate is an end-entity certificate (basicConstraints CA:FALSE) for both TLS server and client use
  (extendedKeyUsage serverAuth and clientAuth), within its validity period.

Anything else (no CN or two, no role URI or two, an unknown role, a CA certificate) is refused with
`CertificateError`. That the certificate chains to the site CA is checked by TLS before any of this runs.
Keys are ECDSA P-256 (every TLS stack speaks it), written 0600.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from snapport.errors import CertificateError, UsageError
from snapport.osal.atomic import write_atomically

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
ROLE_URI_PREFIX = "urn:snapport:role:"
CA_DAYS = 3650
HOST_DAYS = 825
# Valid from a day before issue: a host whose clock is behind (by up to a day) still accepts a certificate just
# issued. With a few minutes, a proxy an hour behind refused every peer ("not yet valid") and its own certificate.
_BACKDATE = timedelta(days=1)
_E = TypeVar("_E", bound=x509.ExtensionType)
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class Role(enum.StrEnum):
    """What a host does at a site: production hosts make snapshot sets, proxies back them up."""

    PRODUCTION = "production"
    PROXY = "proxy"


def host_name(value: str) -> str:
    """A host name as a certificate names it: DNS labels (letters, digits, '-'), at most 253 characters, not an
    IP address. Case is kept; compare with `same_host`."""
    if not value or len(value) > 253 or not all(_LABEL.match(label) for label in value.split(".")):
        raise UsageError(f"{value!r} is not a host name (letters, digits and '-' in dot-separated labels)")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return value
    raise UsageError(f"{value!r} is an address; name the host and give its address with --ip")


def same_host(a: str, b: str) -> bool:
    """Host names compare without case (DNS does)."""
    return a.casefold() == b.casefold()


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who a certificate says its holder is."""

    host: str
    role: Role
    fingerprint_sha256: str
    not_after: datetime

    def is_host(self, name: str) -> bool:
        return same_host(self.host, name)

    def __str__(self) -> str:
        return f"{self.host} ({self.role.value})"


@dataclass(frozen=True, slots=True)
class CaInfo:
    cert_path: Path
    key_path: Path
    subject: str
    fingerprint_sha256: str
    not_after: datetime


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    identity: PeerIdentity
    cert_path: Path
    key_path: Path
    ca_cert_path: Path
    dns_names: tuple[str, ...] = field(default=())
    ip_addresses: tuple[str, ...] = field(default=())


# -- reading ------------------------------------------------------------------------------------------------------


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM certificate file; `CertificateError` if it is missing or not a certificate."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CertificateError(f"cannot read the certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM certificate: {exc}") from exc


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A PEM ECDSA private key (unencrypted: the agent starts unattended; the file is 0600)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise CertificateError(f"cannot read the key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path} is not an ECDSA key")
    return key


def identity_of(cert: x509.Certificate, *, now: datetime | None = None) -> PeerIdentity:
    """The host and role a snapport host certificate carries (see the module docstring); `CertificateError` for
    anything that is not exactly that."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        raise CertificateError(f"the certificate has {len(cns)} subject common names; a host certificate has one")
    try:
        host = host_name(cns[0].value)
    except UsageError as exc:
        raise CertificateError(f"the certificate's common name is not a host name: {exc.message}") from None
    constraints = _extension(cert, x509.BasicConstraints, host)
    usages = _extension(cert, x509.ExtendedKeyUsage, host)
    uris = _extension(cert, x509.SubjectAlternativeName, host).get_values_for_type(x509.UniformResourceIdentifier)
    if constraints.ca:
        raise CertificateError(f"certificate of {host} is a CA certificate, not a host certificate")
    if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages):
        raise CertificateError(f"certificate of {host} is not for TLS server and client use")
    roles = [uri.removeprefix(ROLE_URI_PREFIX) for uri in uris if uri.startswith(ROLE_URI_PREFIX)]
    if len(roles) != 1:
        raise CertificateError(f"certificate of {host} names {len(roles)} roles ({ROLE_URI_PREFIX}...); it needs one")
    try:
        role = Role(roles[0])
    except ValueError:
        raise CertificateError(f"certificate of {host} has an unknown role {roles[0]!r}") from None
    moment = now or datetime.now(UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise CertificateError(
            f"certificate of {host} is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
        )
    return PeerIdentity(host, role, fingerprint(cert), cert.not_valid_after_utc)


def _extension(cert: x509.Certificate, kind: type[_E], host: str) -> _E:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        raise CertificateError(
            f"certificate of {host} has no {kind.__name__}: not a snapport host certificate"
        ) from None


@functools.lru_cache(maxsize=256)
def identity_from_der(der: bytes) -> PeerIdentity:
    """`identity_of` a DER certificate as TLS hands it over (cached: a peer sends the same one on every request;
    only successes are cached, and validity is re-judged when the entry is used after its expiry)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"the peer's certificate does not parse: {exc}") from None
    return identity_of(cert)


def peer_identity(der: bytes) -> PeerIdentity:
    """The identity of a peer's DER certificate, expiry judged now."""
    identity = identity_from_der(der)
    if identity.not_after < datetime.now(UTC):
        raise CertificateError(f"certificate of {identity.host} expired at {identity.not_after:%Y-%m-%d %H:%M}")
    return identity


def verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """`CertificateError` unless `ca` signed `cert` (a check for files; TLS verifies chains on the wire)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateError(f"the certificate of {cert.subject.rfc4514_string()} was not issued by this CA") from exc


# -- writing ------------------------------------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write a key or certificate whole; without `replace`, an existing file is never overwritten."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        write_atomically(path, data, mode=mode, replace=replace)
    except FileExistsError:
        raise CertificateError(f"{path} exists already; it is not replaced") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _validity(days: int) -> tuple[datetime, datetime]:
    if not 1 <= days <= 36500:
        raise UsageError(f"a certificate is valid for 1 to 36500 days, not {days}")
    now = datetime.now(UTC)
    return now - _BACKDATE, now + timedelta(days=days)


def init_ca(directory: Path, *, name: str = "snapport site CA", days: int = CA_DAYS) -> CaInfo:
    """Make the site CA in `directory` (`ca.crt`, and `ca.key` 0600); refused if either file exists."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for existing in (cert_path, key_path):
        if existing.exists():
            raise CertificateError(f"{existing} exists: this site has a CA already (remove it to start a new site)")
    if not name or len(name) > 64:
        raise UsageError("the CA name has 1 to 64 characters")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "snapport"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomically(key_path, _key_pem(key), 0o600, replace=False)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, replace=False)
    return CaInfo(cert_path, key_path, subject.rfc4514_string(), fingerprint(cert), cert.not_valid_after_utc)


def issue(
    ca_dir: Path,
    host: str,
    role: Role,
    *,
    ips: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    out: Path | None = None,
    days: int = HOST_DAYS,
    replace: bool = False,
) -> IssuedCertificate:
    """Issue `HOST.crt` and `HOST.key` (0600) for `host` in `role`, signed by the CA in `ca_dir`, into `out`
    (default `ca_dir`; the CA certificate is copied there too, so the directory is all the host needs)."""
    host = host_name(host)
    role = Role(role)
    addresses = _addresses(ips)
    names = list(dict.fromkeys([host, *(host_name(n) for n in dns_names)]))
    ca_cert = load_certificate(ca_dir / CA_CERT)
    ca_key = load_private_key(ca_dir / CA_KEY)
    if ca_cert.public_key() != ca_key.public_key():
        raise CertificateError(f"{ca_dir / CA_KEY} is not the key of {ca_dir / CA_CERT}")
    target = out or ca_dir
    cert_path, key_path = target / f"{host}.crt", target / f"{host}.key"
    if (target / CA_CERT).exists() and fingerprint(load_certificate(target / CA_CERT)) != fingerprint(ca_cert):
        raise CertificateError(f"{target / CA_CERT} is another CA's certificate; issue into a directory of this site")
    if not replace:
        for existing in (cert_path, key_path):
            if existing.exists():
                raise CertificateError(f"{existing} exists; pass --force to issue a new one in its place")
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(a) for a in addresses]
    alt_names.append(x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role.value))
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "snapport"),
                    x509.NameAttribute(NameOID.COMMON_NAME, host),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(not_before, ca_cert.not_valid_before_utc))
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_atomically(key_path, _key_pem(key), 0o600, replace=replace)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, replace=replace)
    ca_copy = target / CA_CERT
    if not ca_copy.exists():
        _write_atomically(ca_copy, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644, replace=False)
    return IssuedCertificate(
        identity_of(cert),
        cert_path,
        key_path,
        ca_copy,
        tuple(names),
        tuple(str(a) for a in addresses),
    )


def _addresses(values: Iterable[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = []
    for value in values:
        try:
            found.append(ipaddress.ip_address(value))
        except ValueError:
            raise UsageError(f"{value!r} is not an IP address") from None
    return list(dict.fromkeys(found))
