"""The route table and the request pipeline: role, per-object owner check, validation, size limits, JSON errors.

The caller is given by a test-only header here (`peer_source`), so routing is tested without TLS; the
integration tests drive the same pipeline with real certificates.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import Field

from snapport.agent.api import ApiModel
from snapport.agent.certs import PeerIdentity, Role
from snapport.agent.dispatch import (
    ANY_ROLE,
    PRODUCTION_ONLY,
    PROXY_ONLY,
    Call,
    Route,
    authorise_role,
    require_owner,
)
from snapport.agent.routes import CORE_ROUTES
from snapport.agent.server import make_app
from snapport.errors import AccessDenied, ClusterRule, LeaseExpired, ObjectNotFound, SnapportError, UsageError
from tests.support.agents import run
from tests.unit.agent.conftest import MakeAgent

TEST_PEER_HEADER = "X-Test-Peer"  # TEST ONLY: "host/role"; the agent itself reads the TLS certificate


def header_peer(request: web.Request) -> PeerIdentity:
    value = request.headers.get(TEST_PEER_HEADER)
    if value is None:
        raise AccessDenied("no client certificate: agents accept mutual TLS only")
    host, _, role = value.partition("/")
    return PeerIdentity(host, Role(role), "0" * 64, None)  # type: ignore[arg-type]


class Echo(ApiModel):
    text: str = Field(max_length=100)


async def echo(call: Call) -> Echo:
    return call.body_as(Echo)


async def thing(call: Call) -> Echo:
    return Echo(text=str(call.ids["thing_id"]))


async def owned_by_systemtwo(call: Call) -> Collection[str]:
    return {"systemtwo"}


ROUTES = (
    *CORE_ROUTES,
    Route("POST", "/v1/test/echo", echo, "echo", roles=PRODUCTION_ONLY, body=Echo, response=Echo, max_body=200),
    Route(
        "GET",
        "/v1/test/things/{thing_id}",
        thing,
        "a thing",
        roles=PROXY_ONLY,
        owners=owned_by_systemtwo,
        response=Echo,
    ),
)
PRODUCTION = {TEST_PEER_HEADER: "systemone/production"}
PROXY = {TEST_PEER_HEADER: "systemtwo/proxy"}
OTHER_PROXY = {TEST_PEER_HEADER: "systemthree/proxy"}
THING = "/v1/test/things/6d1c4c1e-1111-4a4a-9b9b-000000000001"


def ask(make_agent: MakeAgent, *requests: tuple[str, str, dict[str, str], Any]) -> list[tuple[int, Any]]:
    """Send each (method, path, headers, body) to an agent in this process; (status, JSON body) of each."""

    async def go() -> list[tuple[int, Any]]:
        agent = make_agent()
        async with TestClient(TestServer(make_app(agent, ROUTES, peer_source=header_peer))) as client:
            answers = []
            for method, path, headers, body in requests:
                kwargs: dict[str, Any] = {"headers": headers}
                if isinstance(body, (bytes, str)):
                    kwargs["data"] = body
                elif body is not None:
                    kwargs["json"] = body
                response = await client.request(method, path, **kwargs)
                assert response.content_type == "application/json"
                answers.append((response.status, await response.json()))
            await agent.jobs.shutdown(1)
            return answers

    return run(go())


def error_of(answer: tuple[int, Any]) -> tuple[int, str]:
    status, body = answer
    assert set(body) == {"error", "message", "advice"}, body
    return status, body["error"]


def test_the_role_table_admits_only_the_roles_a_route_lists(make_agent: MakeAgent) -> None:
    ok, refused = ask(
        make_agent,
        ("POST", "/v1/test/echo", PRODUCTION, {"text": "hi"}),
        ("POST", "/v1/test/echo", PROXY, {"text": "hi"}),
    )
    assert ok == (200, {"text": "hi"})
    assert error_of(refused) == (403, "ACCESS_DENIED")
    assert "is for production hosts; systemtwo (proxy) may not call it" in refused[1]["message"]


def test_the_owner_check_admits_only_the_object_s_host(make_agent: MakeAgent) -> None:
    owner, stranger, wrong_role = ask(
        make_agent, ("GET", THING, PROXY, None), ("GET", THING, OTHER_PROXY, None), ("GET", THING, PRODUCTION, None)
    )
    assert owner[0] == 200
    assert error_of(stranger) == (403, "ACCESS_DENIED") and "belongs to systemtwo" in stranger[1]["message"]
    assert error_of(wrong_role) == (403, "ACCESS_DENIED") and "is for proxy hosts" in wrong_role[1]["message"]


def test_requests_are_validated_before_any_handler_runs(make_agent: MakeAgent) -> None:
    answers = ask(
        make_agent,
        ("POST", "/v1/test/echo", PRODUCTION, {"text": "hi", "extra": 1}),  # unknown field
        ("POST", "/v1/test/echo", {**PRODUCTION, "Content-Type": "application/json"}, b'{"text": '),  # not JSON
        ("POST", "/v1/test/echo", PRODUCTION, {"text": "x" * 101}),  # a field too long
        ("POST", "/v1/test/echo", {**PRODUCTION, "Content-Type": "text/plain"}, "text"),
        ("POST", "/v1/test/echo", PRODUCTION, {"text": "x" * 300}),  # over the route's 200 bytes
        ("GET", "/v1/test/things/not-a-uuid", PROXY, None),
        ("GET", "/v1/jobs?limit=0", PROXY, None),
        ("GET", "/v1/jobs?colour=red", PROXY, None),
        ("GET", "/v1/jobs?limit=1&limit=2", PROXY, None),
        ("GET", "/v1/health?x=1", PROXY, None),
        ("POST", "/v1/jobs/6d1c4c1e-1111-4a4a-9b9b-000000000001/cancel", PRODUCTION, {"x": 1}),
        ("GET", "/v1/nothing-here", PROXY, None),
        ("DELETE", "/v1/health", PROXY, None),
        ("GET", "/v1/health", {}, None),  # no certificate
    )
    assert [error_of(a) for a in answers] == [
        (400, "BAD_ARGUMENT"),
        (400, "BAD_ARGUMENT"),
        (400, "BAD_ARGUMENT"),
        (415, "BAD_ARGUMENT"),
        (413, "BAD_ARGUMENT"),
        (400, "BAD_ARGUMENT"),
        (400, "BAD_ARGUMENT"),
        (400, "BAD_ARGUMENT"),
        (400, "BAD_ARGUMENT"),
        (400, "BAD_ARGUMENT"),
        (400, "BAD_ARGUMENT"),
        (404, "OBJECT_NOT_FOUND"),
        (405, "BAD_ARGUMENT"),
        (403, "ACCESS_DENIED"),
    ]
    assert "extra: unknown key" in answers[0][1]["message"]
    assert "'not-a-uuid' is not a thing id" in answers[5][1]["message"]


def test_jobs_through_the_api(make_agent: MakeAgent) -> None:
    job = "6d1c4c1e-1111-4a4a-9b9b-0000000000aa"
    answers = ask(
        make_agent,
        ("POST", "/v1/jobs", PRODUCTION, {"kind": "test.sleep", "params": {"seconds": 0}, "id": job}),
        ("POST", "/v1/jobs", PRODUCTION, {"kind": "test.sleep", "params": {"seconds": 0}, "id": job}),  # a retry
        ("POST", "/v1/jobs", PRODUCTION, {"kind": "test.sleep", "params": {"seconds": 1}, "id": job}),
        ("POST", "/v1/jobs", PROXY, {"kind": "test.sleep", "params": {"seconds": 0}}),  # the kind's roles
        ("POST", "/v1/jobs", PRODUCTION, {"kind": "test.sleep", "params": {"seconds": 0, "x": 1}}),
        ("POST", "/v1/jobs", PRODUCTION, {"kind": "no.such-kind"}),
        ("POST", "/v1/jobs", PRODUCTION, {"kind": "Bad Kind!"}),
        ("GET", f"/v1/jobs/{job}", PROXY, None),
        ("GET", "/v1/jobs/6d1c4c1e-1111-4a4a-9b9b-0000000000bb", PROXY, None),
        ("POST", f"/v1/jobs/{job}/cancel", OTHER_PROXY, None),  # neither the submitter nor this host
        ("GET", "/v1/health", PROXY, None),
    )
    (status, first), (_, retry) = answers[:2]
    assert status == 202 and first["kind"] == "test.sleep" and first["requested_by"] == "systemone"
    assert retry["id"] == first["id"] == job
    assert [error_of(a) for a in answers[2:7]] == [
        (409, "BAD_STATE"),
        (403, "ACCESS_DENIED"),
        (400, "BAD_ARGUMENT"),
        (404, "OBJECT_NOT_FOUND"),
        (400, "BAD_ARGUMENT"),
    ]
    assert answers[7][0] == 200 and answers[7][1]["id"] == job
    assert error_of(answers[8]) == (404, "OBJECT_NOT_FOUND")
    assert error_of(answers[9]) == (403, "ACCESS_DENIED")
    health = answers[10][1]
    assert (health["host"], health["role"], health["peer"]) == (
        "systemone",
        "production",
        {"host": "systemtwo", "role": "proxy"},
    )
    assert health["kinds"] == ["offhost-backup", "proxy-backup", "test.sleep"]


def test_route_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="versioned"):
        Route("GET", "/health", echo, "x")
    with pytest.raises(ValueError, match="_id"):
        Route("GET", "/v1/things/{name}", echo, "x")
    with pytest.raises(ValueError, match="no role"):
        Route("GET", "/v1/x", echo, "x", roles=frozenset())
    with pytest.raises(ValueError, match="GET takes no body"):
        Route("GET", "/v1/x", echo, "x", body=Echo)
    with pytest.raises(ValueError, match="method"):
        Route("PATCH", "/v1/x", echo, "x")


def test_role_table_and_owner_helpers() -> None:
    proxy = PeerIdentity("systemTwo", Role.PROXY, "", None)  # type: ignore[arg-type]
    authorise_role(Route("GET", "/v1/x", echo, "x", roles=ANY_ROLE), proxy)
    authorise_role(Route("GET", "/v1/x", echo, "x", roles=PROXY_ONLY), proxy)
    with pytest.raises(AccessDenied):
        authorise_role(Route("GET", "/v1/x", echo, "x", roles=PRODUCTION_ONLY), proxy)
    require_owner(proxy, ["systemtwo"], "set X")  # host names compare without case
    with pytest.raises(AccessDenied, match="set X belongs to systemone"):
        require_owner(proxy, ["systemone"], "set X")
    with pytest.raises(AccessDenied, match="no host"):
        require_owner(proxy, [], "set X")


def test_errors_map_to_http_statuses() -> None:
    assert UsageError("").http_status == 400
    assert AccessDenied("").http_status == 403
    assert ObjectNotFound("").http_status == 404
    assert ClusterRule("").http_status == 409  # by its parent, ImportRefused
    assert LeaseExpired("").http_status == 410
    assert SnapportError("").http_status == 500
