"""The OpenAPI 3.1 document, generated from the route table and the pydantic models (never written by hand, so it
cannot drift from what the agent serves; a test checks both directions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from snapport import __version__
from snapport.agent.api import API_VERSION, ErrorBody
from snapport.agent.dispatch import ANY_ROLE, Route
from snapport.agent.jobs import JobRegistry
from snapport.errors import AccessDenied, ObjectNotFound, UsageError

OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("snapport_openapi")
_REF = "#/components/schemas/{model}"


def openapi_document(routes: Iterable[Route], registry: JobRegistry) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`; the job kinds of `registry` with their parameter schemas."""
    routes = list(routes)
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for route in routes:
        wanted += [(m, "validation") for m in (route.body, route.query) if m is not None]
        if route.response is not None:
            wanted.append((route.response, "serialization"))
    kinds = sorted(registry, key=lambda k: k.name)
    wanted += [(k.params, "validation") for k in kinds]
    refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF)

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "snapport agent",
            "version": __version__,
            "description": "One host's snapport agent. Mutual TLS only: the caller is the host and role its "
            "certificate (issued by the site CA) names; each operation lists the roles that may call it "
            "(`x-snapport-roles`) and whether the caller must own the object (`x-snapport-owner-check`).",
        },
        "servers": [{"url": "/", "description": f"API {API_VERSION}"}],
        "security": [{"siteCertificate": []}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "siteCertificate": {
                    "type": "mutualTLS",
                    "description": "a host certificate issued by the site CA (`snapport certs issue`)",
                }
            },
        },
        "x-snapport-job-kinds": {
            k.name: {
                "summary": k.summary,
                "roles": sorted(r.value for r in k.roles),
                "params": refs[(k.params, "validation")],
            }
            for k in kinds
        },
    }


def _operation(route: Route, refs: Mapping[tuple[Any, JsonSchemaMode], Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "x-snapport-roles": sorted(r.value for r in route.roles),
        "x-snapport-owner-check": route.owners is not None,
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
        for name in route.path_params
    ]
    if route.query is not None:
        schema = route.query.model_json_schema(ref_template=_REF)
        required = set(schema.get("required", []))
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema["properties"].items()
        ]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    success: dict[str, Any] = {"description": "done"}
    if route.response is not None:
        success["content"] = {route.media_type: {"schema": refs[(route.response, "serialization")]}}
    else:
        success["content"] = {route.media_type: {"schema": {}}}
    error = {"content": {"application/json": {"schema": refs[(ErrorBody, "serialization")]}}}
    responses: dict[str, Any] = {str(route.status): success}
    if route.body is not None or route.query is not None or route.path_params:
        responses[str(UsageError.http_status)] = {"description": "invalid request (BAD_ARGUMENT)", **error}
    if route.roles != ANY_ROLE or route.owners is not None or route.body is not None:
        responses[str(AccessDenied.http_status)] = {"description": "not for this caller (ACCESS_DENIED)", **error}
    if route.path_params:
        responses[str(ObjectNotFound.http_status)] = {"description": "no such object", **error}
    responses["default"] = {"description": "an error, by its stable name (docs/exit-codes.md)", **error}
    operation["responses"] = responses
    return operation
