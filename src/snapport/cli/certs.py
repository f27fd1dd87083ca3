"""`snapport certs init|issue|show`: the site CA and host certificates."""

from __future__ import annotations

from pathlib import Path

import click

from snapport.cli.env import Env, json_option, pass_env
from snapport.cli.output import emit_json, fields

CERTS_DIRNAME = "certs"
_dir_option = click.option(
    "--dir",
    "ca_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The CA's directory [default: $SNAPPORT_HOME/certs].",
)


@click.group("certs")
def certs() -> None:
    """The site CA and host certificates for the agents' mutual TLS."""


@certs.command("init")
@_dir_option
@click.option("--name", default="snapport site CA", show_default=True, help="The CA's common name.")
@click.option("--days", type=int, default=3650, show_default=True, help="Validity of the CA certificate.")
@json_option
@pass_env
def init(env: Env, ca_dir: Path | None, name: str, days: int, as_json: bool) -> None:
    """Make the site CA (ca.crt, and ca.key readable by its owner only)."""
    from snapport.agent.certs import init_ca  # noqa: PLC0415  (cryptography loads only for these verbs)

    ca = init_ca(ca_dir or env.home / CERTS_DIRNAME, name=name, days=days)
    if as_json:
        emit_json(
            {
                "ca_cert": str(ca.cert_path),
                "ca_key": str(ca.key_path),
                "subject": ca.subject,
                "fingerprint_sha256": ca.fingerprint_sha256,
                "not_after": ca.not_after,
            }
        )
        return
    fields(
        [
            ("CA certificate", ca.cert_path),
            ("CA key", ca.key_path),
            ("subject", ca.subject),
            ("SHA-256", ca.fingerprint_sha256),
            ("valid until", ca.not_after.isoformat(timespec="seconds")),
        ]
    )


@certs.command("issue")
@click.argument("host")
@click.option("--role", type=click.Choice(["production", "proxy"]), required=True, help="The host's role.")
@click.option("--ip", "ips", multiple=True, help="An address the host is reached at (repeatable).")
@click.option("--dns", "dns_names", multiple=True, help="Another DNS name of the host (repeatable).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write HOST.crt, HOST.key and ca.crt here (to copy to the host) [default: the CA's directory].",
)
@_dir_option
@click.option("--days", type=int, default=825, show_default=True, help="Validity of the certificate.")
@click.option("--force", is_flag=True, help="Replace an existing HOST.crt/HOST.key.")
@json_option
@pass_env
def issue(
    env: Env,
    host: str,
    role: str,
    ips: tuple[str, ...],
    dns_names: tuple[str, ...],
    out: Path | None,
    ca_dir: Path | None,
    days: int,
    force: bool,
    as_json: bool,
) -> None:
    """Issue HOST's certificate for ROLE, signed by the site CA (HOST.crt, and HOST.key owner-only)."""
    from snapport.agent.certs import Role, issue  # noqa: PLC0415

    issued = issue(
        ca_dir or env.home / CERTS_DIRNAME,
        host,
        Role(role),
        ips=ips,
        dns_names=dns_names,
        out=out,
        days=days,
        replace=force,
    )
    payload = {
        "host": issued.identity.host,
        "role": issued.identity.role.value,
        "cert": str(issued.cert_path),
        "key": str(issued.key_path),
        "ca_cert": str(issued.ca_cert_path),
        "dns": list(issued.dns_names),
        "ips": list(issued.ip_addresses),
        "fingerprint_sha256": issued.identity.fingerprint_sha256,
        "not_after": issued.identity.not_after,
    }
    if as_json:
        emit_json(payload)
        return
    fields([(k.replace("_", " "), ", ".join(v) if isinstance(v, list) else v) for k, v in payload.items()])


@certs.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def show(file: Path, as_json: bool) -> None:
    """Show the host identity (name, role) a certificate carries, as an agent would read it."""
    from snapport.agent.certs import identity_of, load_certificate  # noqa: PLC0415

    identity = identity_of(load_certificate(file))
    payload = {
        "host": identity.host,
        "role": identity.role.value,
        "fingerprint_sha256": identity.fingerprint_sha256,
        "not_after": identity.not_after,
    }
    if as_json:
        emit_json(payload)
        return
    fields(list(payload.items()))
