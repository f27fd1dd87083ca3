"""TLS contexts for agents and their clients: mutual TLS only, TLS 1.2 or later, the site CA the only issuer."""

from __future__ import annotations

import ssl
from pathlib import Path

from snapport.errors import CertificateError

# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3's suites are all of that kind already).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _context(purpose: int, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        # Only the site CA: never the system's trust store, which would let any public CA's customer in.
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load the site CA {ca}: {exc}") from None
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load the certificate {cert} with its key {key}: {exc}") from None
    return context


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """An agent's context: every client must present a certificate issued by the site CA."""
    return _context(ssl.PROTOCOL_TLS_SERVER, cert, key, ca)


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """A client's context: presents the host certificate, accepts only an agent whose certificate the site CA
    issued for the host name asked for (`check_hostname`)."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca)
    context.check_hostname = True
    return context
