"""How a request is handled: authenticate the peer's certificate, authorise its role and (where a route names one)
its ownership of the object, validate the body and query, call the handler, answer JSON; every error is a JSON
`{"error": NAME, "message": ..., "advice": ...}` with an HTTP status.

A route is one declarative `Route` row: method, path, handler, who may call it, what it takes and returns. The
OpenAPI document is generated from the same rows, so the two cannot drift.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from snapport.agent.api import ErrorBody
from snapport.agent.certs import PeerIdentity, Role, peer_identity, same_host
from snapport.agent.config import describe_validation
from snapport.agent.log import log
from snapport.agent.service import Agent
from snapport.errors import (
    AccessDenied,
    ObjectNotFound,
    SnapportError,
    UsageError,
)

M = TypeVar("M", bound=BaseModel)

ANY_ROLE: frozenset[Role] = frozenset(Role)
PRODUCTION_ONLY: frozenset[Role] = frozenset({Role.PRODUCTION})
PROXY_ONLY: frozenset[Role] = frozenset({Role.PROXY})

PeerSource = Callable[[web.Request], PeerIdentity]
AGENT = web.AppKey("snapport_agent", Agent)
PEER_SOURCE: web.AppKey[PeerSource] = web.AppKey("snapport_peer_source")
PEER = web.RequestKey("snapport_peer", PeerIdentity)
_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")
_METHODS = ("GET", "POST", "PUT", "DELETE")

Reply = BaseModel | web.StreamResponse
Handler = Callable[["Call"], Awaitable[Reply]]
OwnerLookup = Callable[["Call"], Awaitable[Collection[str]]]


@dataclass(frozen=True)
class Route:
    """One API operation.

    - `roles`: the roles whose certificates may call it (the role table: `ANY_ROLE`, `PRODUCTION_ONLY`, ...).
    - `owners`: the per-object check. Given, it returns the hosts the addressed object belongs to (e.g. the proxy
      named for a set); the peer must be one of them, or the call is `ACCESS_DENIED`. Runs after the role check
      and before the body is read.
    - `body`, `query`: pydantic models the request is validated against (unknown fields refused); `response`
      the model the handler returns (None: it returns its own `web.StreamResponse` of `media_type`).
    - every path parameter is an id (`{..._id}`, a UUID), checked before the handler runs.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    roles: frozenset[Role] = ANY_ROLE
    owners: OwnerLookup | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    media_type: str = "application/json"
    max_body: int | None = None  # default: the agent's max_request_bytes
    tag: str = "agent"

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"route {self.path}: method {self.method} is not one of {_METHODS}")
        if not self.path.startswith("/v1/"):
            raise ValueError(f"route {self.path}: the API is versioned, paths start with /v1/")
        if any(not p.endswith("_id") for p in self.path_params):
            raise ValueError(f"route {self.path}: every path parameter is an id named ..._id")
        if not self.roles:
            raise ValueError(f"route {self.path}: no role may call it")
        if self.body is not None and self.method == "GET":
            raise ValueError(f"route {self.path}: a GET takes no body")

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PATH_PARAM.findall(self.path))

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")


@dataclass(frozen=True)
class Call:
    """One authorised request, as a handler sees it."""

    request: web.Request
    route: Route
    peer: PeerIdentity
    agent: Agent
    ids: Mapping[str, uuid.UUID]
    body: BaseModel | None
    query: BaseModel | None

    def body_as(self, model: type[M]) -> M:
        assert isinstance(self.body, model), f"{self.route.path} declares no {model.__name__} body"
        return self.body

    def query_as(self, model: type[M]) -> M:
        assert isinstance(self.query, model), f"{self.route.path} declares no {model.__name__} query"
        return self.query


def require_owner(peer: PeerIdentity, owners: Collection[str], what: str) -> None:
    """The per-object check: the peer must be one of the hosts `what` belongs to (use it in handlers too)."""
    if not any(same_host(peer.host, owner) for owner in owners):
        raise AccessDenied(f"{what} belongs to {', '.join(sorted(owners)) or 'no host'}; {peer} may not use it")


def authorise_role(route: Route, peer: PeerIdentity) -> None:
    """The role table: the peer's role must be one the route lists."""
    if peer.role not in route.roles:
        allowed = " or ".join(sorted(r.value for r in route.roles))
        raise AccessDenied(f"{route.method} {route.path} is for {allowed} hosts; {peer} may not call it")


def tls_peer(request: web.Request) -> PeerIdentity:
    """The caller, from the client certificate TLS verified against the site CA."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise AccessDenied("no client certificate: agents accept mutual TLS only")
    return peer_identity(der)


class Refusal(Exception):
    """An error answered with a status of its own (413 too large, 415 not JSON) rather than its class's."""

    def __init__(self, status: int, error: SnapportError) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error


def error_response(error: SnapportError, status: int | None = None) -> web.Response:
    return web.Response(
        text=ErrorBody.of(error).model_dump_json(),
        status=status or error.http_status,
        content_type="application/json",
    )


def _from_http(exc: web.HTTPException, request: web.Request) -> SnapportError:
    """aiohttp's own refusals (no such route, wrong method, body too large) in our vocabulary."""
    if exc.status == 404:
        return ObjectNotFound(f"no API route {request.path}; see /v1/openapi.json")
    if exc.status == 405:
        return UsageError(f"{request.method} is not allowed on {request.path}")
    if exc.status == 413:
        return UsageError(f"the request body is too large ({exc.text or exc.reason})")
    return UsageError(f"{exc.status} {exc.reason}")


@web.middleware
async def guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Authenticate every request (even one for no route), turn errors into JSON, log one line per request."""
    started = time.monotonic()
    peer: PeerIdentity | None = None
    try:
        peer = request.app[PEER_SOURCE](request)
        request[PEER] = peer
        response = await handler(request)
    except SnapportError as exc:
        response = error_response(exc)
    except Refusal as exc:
        response = error_response(exc.error, exc.status)
    except web.HTTPException as exc:
        response = error_response(_from_http(exc, request), exc.status)
    except Exception as exc:
        log("request.crashed", level=40, method=request.method, path=request.path, exc_info=exc)
        response = error_response(SnapportError(f"internal error: {type(exc).__name__}: {exc}"))
    log(
        "request",
        method=request.method,
        path=request.path,
        status=response.status,
        ms=round((time.monotonic() - started) * 1000, 1),
        peer=None if peer is None else str(peer),
    )
    return response


def endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of a route: role, ids, per-object check, query and body, then the route's handler."""

    async def handle(request: web.Request) -> web.StreamResponse:
        peer = request[PEER]
        agent = request.app[AGENT]
        authorise_role(route, peer)
        ids = {name: _id(name, request.match_info[name]) for name in route.path_params}
        query = _query(route, request)
        if route.body is None and (request.content_length or request.body_exists):
            raise UsageError(f"{route.method} {route.path} takes no request body")
        call = Call(request, route, peer, agent, ids, None, query)
        if route.owners is not None:
            require_owner(peer, await route.owners(call), request.path)
        if route.body is not None:
            call = Call(request, route, peer, agent, ids, await _body(route, request, agent), query)
        reply = await route.handler(call)
        if isinstance(reply, web.StreamResponse):
            return reply
        return web.Response(text=reply.model_dump_json(), status=route.status, content_type="application/json")

    handle.__name__ = route.operation_id
    return handle


def _id(name: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise UsageError(f"{value[:64]!r} is not a {name.removesuffix('_id').replace('_', ' ')} id (a UUID)") from None


def _query(route: Route, request: web.Request) -> BaseModel | None:
    if route.query is None:
        if request.query:
            raise UsageError(f"{route.method} {route.path} takes no query parameters")
        return None
    if len(set(request.query.keys())) != len(request.query):
        raise UsageError("a query parameter is given twice")
    try:
        return route.query.model_validate(dict(request.query))
    except ValidationError as exc:
        raise UsageError(f"invalid query: {describe_validation(exc)}") from None


async def _body(route: Route, request: web.Request, agent: Agent) -> BaseModel:
    assert route.body is not None
    limit = route.max_body or agent.config.max_request_bytes
    if request.content_type != "application/json":
        raise Refusal(415, UsageError(f"the request body must be application/json, not {request.content_type}"))
    if request.content_length is not None and request.content_length > limit:
        raise Refusal(413, UsageError(f"the request body is {request.content_length} bytes; the limit is {limit}"))
    raw = await request.read()  # bounded by the application's client_max_size as well
    if len(raw) > limit:
        raise Refusal(413, UsageError(f"the request body is larger than {limit} bytes"))
    try:
        return route.body.model_validate_json(raw)
    except ValidationError as exc:
        raise UsageError(f"invalid request body: {describe_validation(exc)}") from None


def build_app(
    agent: Agent,
    routes: Collection[Route],
    *,
    peer_source: PeerSource = tls_peer,
) -> web.Application:
    """The aiohttp application serving `routes` for `agent`. `peer_source` finds the caller (tests of the routing
    alone may pass their own; the server always uses the TLS certificate)."""
    largest = max([agent.config.max_request_bytes, *(r.max_body or 0 for r in routes)])
    app = web.Application(middlewares=[guard], client_max_size=largest)
    app[AGENT] = agent
    app[PEER_SOURCE] = peer_source
    seen: set[tuple[str, str]] = set()
    for route in routes:
        if (route.method, route.path) in seen:
            raise ValueError(f"route {route.method} {route.path} is declared twice")
        seen.add((route.method, route.path))
        app.router.add_route(route.method, route.path, endpoint(route))
    return app
