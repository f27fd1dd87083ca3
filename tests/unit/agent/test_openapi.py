"""The OpenAPI document describes exactly the routes the agent serves, and every reference in it resolves."""

from __future__ import annotations

import json
from typing import Any

from snapport.agent.openapi import OPENAPI
from snapport.agent.registry import routes
from snapport.agent.server import make_app
from tests.unit.agent.conftest import MakeAgent


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_route_is_documented_and_every_documented_route_is_served(make_agent: MakeAgent) -> None:
    app = make_app(make_agent())
    served = {
        (route.method.lower(), route.resource.canonical) for route in app.router.routes() if route.resource is not None
    }
    document = app[OPENAPI]
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert served == documented
    assert ("get", "/v1/openapi.json") in served and ("post", "/v1/jobs/{job_id}/cancel") in served
    assert {(r.method.lower(), r.path) for r in routes()} == served


def test_the_document_is_openapi_3_1_with_resolvable_references(make_agent: MakeAgent) -> None:
    document = json.loads(json.dumps(make_app(make_agent())[OPENAPI]))  # plain JSON, nothing else
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["siteCertificate"]["type"] == "mutualTLS"
    schemas = document["components"]["schemas"]
    refs = _refs(document)
    assert refs and all(r.startswith("#/components/schemas/") and r.split("/")[-1] in schemas for r in refs)
    operation_ids = []
    for path, operations in document["paths"].items():
        assert path.startswith("/v1/")
        for operation in operations.values():
            operation_ids.append(operation["operationId"])
            assert operation["x-snapport-roles"], path
            assert "default" in operation["responses"]
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert parameter["schema"] == {"type": "string", "format": "uuid"}
    assert len(operation_ids) == len(set(operation_ids))
    cancel = document["paths"]["/v1/jobs/{job_id}/cancel"]["post"]
    assert cancel["x-snapport-owner-check"] is True and "403" in cancel["responses"]
    assert [p["name"] for p in document["paths"]["/v1/jobs"]["get"]["parameters"]] == ["state", "kind", "limit"]
    assert schemas["JobRequest"]["additionalProperties"] is False  # unknown fields refused, and said so
    sleep = document["x-snapport-job-kinds"]["test.sleep"]
    assert sleep["roles"] == ["production"] and sleep["params"]["$ref"].endswith("/SleepParams")
