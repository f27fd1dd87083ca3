"""Certificates: the site CA and host certificates as `certs init/issue` make them, and the strict reading of the
identity (host, role) a peer's certificate carries."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from snapport.agent.certs import (
    CA_CERT,
    CA_KEY,
    Role,
    host_name,
    identity_from_der,
    identity_of,
    init_ca,
    issue,
    load_certificate,
    load_private_key,
    peer_identity,
    same_host,
    verify_signed_by,
)
from snapport.errors import CertificateError, UsageError


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_p256_ca_with_a_private_key_and_refuses_a_second(ca_dir: Path) -> None:
    cert = load_certificate(ca_dir / CA_CERT)
    key = load_private_key(ca_dir / CA_KEY)
    assert isinstance(key.curve, ec.SECP256R1)
    assert mode(ca_dir / CA_KEY) == 0o600 and mode(ca_dir) == 0o700
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=3649)
    before = (ca_dir / CA_KEY).read_bytes()
    with pytest.raises(CertificateError, match="has a CA already"):
        init_ca(ca_dir)
    assert (ca_dir / CA_KEY).read_bytes() == before


def test_issue_makes_a_host_certificate_the_peer_can_read(ca_dir: Path) -> None:
    issued = issue(ca_dir, "systemTwo", Role.PROXY, ips=["198.18.0.2", "::1"], dns_names=["backup.example"])
    assert (issued.identity.host, issued.identity.role) == ("systemTwo", Role.PROXY)
    assert issued.cert_path == ca_dir / "systemTwo.crt" and mode(issued.key_path) == 0o600
    cert = load_certificate(issued.cert_path)
    verify_signed_by(cert, load_certificate(ca_dir / CA_CERT))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["systemTwo", "backup.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.2"), ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:snapport:role:proxy"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert identity_from_der(cert.public_bytes(serialization.Encoding.DER)) == issued.identity
    assert load_private_key(issued.key_path).public_key() == cert.public_key()


def test_issue_to_another_directory_carries_the_ca_certificate_and_never_overwrites(
    ca_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "for-systemone"
    issued = issue(ca_dir, "systemone", Role.PRODUCTION, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "systemone.crt", "systemone.key"]
    assert (out / CA_CERT).read_bytes() == (ca_dir / CA_CERT).read_bytes()
    assert not (out / CA_KEY).exists()
    with pytest.raises(CertificateError, match="--force"):
        issue(ca_dir, "systemone", Role.PRODUCTION, out=out)
    again = issue(ca_dir, "systemone", Role.PROXY, out=out, replace=True)
    assert again.identity.role is Role.PROXY and again.identity != issued.identity

    other = tmp_path / "other-site"
    init_ca(other)
    with pytest.raises(CertificateError, match="another CA"):
        issue(other, "systemthree", Role.PROXY, out=out)
    with pytest.raises(CertificateError, match="not issued by this CA"):
        verify_signed_by(load_certificate(out / "systemone.crt"), load_certificate(other / CA_CERT))


@pytest.mark.parametrize("bad", ["", "-x", "a..b", "a_b", "x" * 64, "198.18.0.1", "::1", "a b", "é"])
def test_host_names_are_dns_names(bad: str) -> None:
    with pytest.raises(UsageError):
        host_name(bad)


def test_host_names_compare_without_case() -> None:
    assert host_name("systemOne.lab") == "systemOne.lab"
    assert same_host("systemOne", "SYSTEMONE") and not same_host("systemone", "systemtwo")


def test_issue_refuses_bad_input(ca_dir: Path) -> None:
    with pytest.raises(UsageError, match="not an IP address"):
        issue(ca_dir, "systemone", Role.PROXY, ips=["198.18.0.300"])
    with pytest.raises(UsageError, match="is an address"):
        issue(ca_dir, "198.18.0.1", Role.PROXY)
    with pytest.raises(ValueError, match="admin"):
        issue(ca_dir, "systemone", Role("admin"))
    with pytest.raises(UsageError, match="days"):
        issue(ca_dir, "systemone", Role.PROXY, days=0)
    assert not (ca_dir / "systemone.crt").exists()


# -- strict parsing: certificates that must not pass ---------------------------------------------------------------


BOTH_USES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def _build(
    ca_dir: Path,
    *,
    cn: str | None = "h",
    uris: tuple[str, ...] = ("urn:snapport:role:proxy",),
    ca: bool = False,
    usages: tuple[x509.ObjectIdentifier, ...] = BOTH_USES,
    days: int = 30,
) -> x509.Certificate:
    """A certificate signed by the site CA, well formed unless a keyword says otherwise."""
    ca_cert, ca_key = load_certificate(ca_dir / CA_CERT), load_private_key(ca_dir / CA_KEY)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "snapport")]
    names += [] if cn is None else [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("h"), *(x509.UniformResourceIdentifier(u) for u in uris)]),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def test_a_well_formed_certificate_passes(ca_dir: Path) -> None:
    assert identity_of(_build(ca_dir)).host == "h"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cn": None}, "0 subject common names"),
        ({"cn": "198.18.0.1"}, "not a host name"),
        ({"uris": ()}, "names 0 roles"),
        ({"uris": ("urn:snapport:role:proxy", "urn:snapport:role:production")}, "names 2 roles"),
        ({"uris": ("urn:snapport:role:admin",)}, "unknown role 'admin'"),
        ({"uris": ("urn:snapport:roles:proxy",)}, "names 0 roles"),
        ({"ca": True}, "is a CA certificate"),
        ({"usages": (ExtendedKeyUsageOID.SERVER_AUTH,)}, "not for TLS server and client"),
        ({"days": -1}, "not now"),
    ],
)
def test_a_certificate_without_exactly_one_identity_is_refused(
    ca_dir: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(CertificateError, match=message):
        identity_of(_build(ca_dir, **kwargs))  # type: ignore[arg-type]


def test_a_certificate_without_the_extensions_is_refused(ca_dir: Path) -> None:
    ca = trustme.CA()
    foreign = x509.load_pem_x509_certificate(ca.issue_cert("h", common_name="h").cert_chain_pems[0].bytes())
    with pytest.raises(CertificateError, match="names 0 roles"):  # trustme: a server/client cert with no role
        identity_of(foreign)
    with pytest.raises(CertificateError, match="0 subject common names"):  # its CA: no CN
        identity_of(x509.load_pem_x509_certificate(ca.cert_pem.bytes()))


def test_an_expired_peer_is_refused_even_when_its_identity_was_cached(ca_dir: Path) -> None:
    cert = _build(ca_dir)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert peer_identity(der).host == "h"
    expired = _build(ca_dir, days=-1).public_bytes(serialization.Encoding.DER)
    with pytest.raises(CertificateError, match="not now"):
        peer_identity(expired)
    with pytest.raises(CertificateError, match="does not parse"):
        identity_from_der(b"not a certificate")
