"""A client of another host's agent: mutual TLS with this host's certificate; the agent must present a certificate
of the site CA for the host name expected (and, if asked, in the role expected). API errors come back as the same
`SnapportError` classes, so a remote `ACCESS_DENIED` exits with the same code as a local one."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, JsonValue, ValidationError

from snapport.agent.api import ErrorBody, Health, JobList, JobRequest, JobView
from snapport.agent.certs import PeerIdentity, Role, peer_identity
from snapport.agent.config import Address, AgentConfig, parse_address
from snapport.agent.tls import client_context
from snapport.errors import AccessDenied, AgentUnreachable, CertificateError, SnapportError
from snapport.model import JobState

M = TypeVar("M", bound=BaseModel)
MAX_RESPONSE_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class ClientTls:
    """This host's certificate and key, and the site CA: what a client presents and trusts."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def of(cls, config: AgentConfig, home: Path) -> ClientTls:
        return cls(config.cert_path(home), config.key_path(home), config.ca_path(home))

    def context(self) -> ssl.SSLContext:
        return client_context(self.cert, self.key, self.ca)


def error_from_body(status: int, body: bytes) -> SnapportError:
    """The error an agent answered, as the class of the same name (a name this version does not know: the root)."""
    try:
        parsed = ErrorBody.model_validate_json(body)
    except ValidationError:
        return SnapportError(f"the agent answered HTTP {status} without a snapport error: {body[:200]!r}")
    return SnapportError.from_code(parsed.error, parsed.message)


class _Response(aiohttp.ClientResponse):
    """A response that keeps the agent's certificate (aiohttp lets go of the connection once a small body is in)."""

    peer_der: bytes | None = None

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        transport = connection.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        self.peer_der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return await super().start(connection)


class AgentClient:
    """`async with AgentClient(address, tls) as agent: await agent.health()`.

    `server_name`: the host name the agent's certificate must carry (default: the address's host, which must then
    be in its certificate's DNS or IP names). `expected_role`: refuse an agent whose certificate has another role.
    """

    def __init__(
        self,
        address: Address | str,
        tls: ClientTls,
        *,
        server_name: str | None = None,
        expected_role: Role | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.server_name = server_name
        self.expected_role = expected_role
        self.peer: PeerIdentity | None = None  # the agent, as its certificate says, once a request was answered
        self._ssl = tls.context()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 10.0))
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_peer(cls, config: AgentConfig, home: Path, name: str, *, timeout_s: float = 30.0) -> AgentClient:
        """A client of the peer `name` of agent.toml, from this host: its certificate must carry that name and the
        peer's role."""
        peer = config.peer(name)
        return cls(
            peer.address,
            ClientTls.of(config, home),
            server_name=peer.name,
            expected_role=peer.role,
            timeout_s=timeout_s,
        )

    async def __aenter__(self) -> AgentClient:
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=8)
        self._session = aiohttp.ClientSession(
            base_url=f"https://{self.address}",
            connector=connector,
            timeout=self._timeout,
            raise_for_status=False,
            response_class=_Response,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the API ---------------------------------------------------------------------------------------------------

    async def health(self) -> Health:
        return await self.call("GET", "/v1/health", response=Health)

    async def openapi(self) -> dict[str, Any]:
        document: dict[str, Any] = await self.call_json("GET", "/v1/openapi.json")
        return document

    async def list_jobs(
        self, *, state: JobState | None = None, kind: str | None = None, limit: int | None = None
    ) -> JobList:
        query = {k: str(v) for k, v in (("state", state), ("kind", kind), ("limit", limit)) if v is not None}
        return await self.call("GET", "/v1/jobs", query=query, response=JobList)

    async def get_job(self, job_id: uuid.UUID) -> JobView:
        return await self.call("GET", f"/v1/jobs/{job_id}", response=JobView)

    async def submit_job(
        self, kind: str, params: Mapping[str, JsonValue], *, job_id: uuid.UUID | None = None
    ) -> JobView:
        body = JobRequest(kind=kind, params=dict(params), id=job_id)
        return await self.call("POST", "/v1/jobs", body=body, response=JobView)

    async def cancel_job(self, job_id: uuid.UUID) -> JobView:
        return await self.call("POST", f"/v1/jobs/{job_id}/cancel", response=JobView)

    async def wait_job(self, job_id: uuid.UUID, *, timeout_s: float, poll_s: float = 0.2) -> JobView:
        """Poll until the job has finished; `AgentUnreachable` if it has not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = await self.get_job(job_id)
            if job.state.finished:
                return job
            if time.monotonic() > deadline:
                raise AgentUnreachable(
                    f"job {job_id} on {self.address} is still {job.state.value} after {timeout_s:g} s"
                )
            await asyncio.sleep(poll_s)

    # -- any route -------------------------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        response: type[M],
        body: BaseModel | None = None,
        query: Mapping[str, str] | None = None,
    ) -> M:
        """One API call answered with `response`; an error answer raises its `SnapportError`."""
        raw = await self._request(method, path, body=body, query=query)
        try:
            return response.model_validate_json(raw)
        except ValidationError as exc:
            raise SnapportError(f"{self.address} answered {method} {path} with an unexpected body: {exc}") from None

    async def call_json(self, method: str, path: str, *, query: Mapping[str, str] | None = None) -> Any:
        return json.loads(await self._request(method, path, query=query))

    async def _request(
        self, method: str, path: str, *, body: BaseModel | None = None, query: Mapping[str, str] | None = None
    ) -> bytes:
        if self._session is None:
            raise RuntimeError("use AgentClient in `async with`")
        data = None if body is None else body.model_dump_json(exclude_none=True).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._session.request(
                method,
                path,
                data=data,
                headers=headers,
                params=query,
                server_hostname=self.server_name,
            ) as answer:
                self._check_peer(answer)
                chunks, size = [], 0
                async for chunk in answer.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise SnapportError(f"{self.address} answered with more than {MAX_RESPONSE_BYTES} bytes")
                    chunks.append(chunk)
                raw = b"".join(chunks)
                if answer.status >= 400:
                    raise error_from_body(answer.status, raw)
                return raw
        except aiohttp.ClientConnectorCertificateError as exc:
            raise AgentUnreachable(
                f"{self.address}: its certificate is not trusted for {self.server_name or self.address.host}: "
                f"{exc.certificate_error}"
            ) from None
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise AgentUnreachable(f"{self.address}: {_reason(exc)}") from None

    def _check_peer(self, answer: aiohttp.ClientResponse) -> None:
        der = answer.peer_der if isinstance(answer, _Response) else None
        if not der:
            raise AgentUnreachable(f"{self.address} did not present a certificate")
        try:
            self.peer = peer_identity(der)
        except CertificateError as exc:
            raise AgentUnreachable(f"{self.address}: {exc.message}") from None
        if self.expected_role is not None and self.peer.role is not self.expected_role:
            raise AccessDenied(f"{self.address} is {self.peer}, not a {self.expected_role.value} host")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
