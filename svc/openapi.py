"""The OpenAPI 3.1 document, built once per app from its routes and the msgspec types, served pre-encoded.

Payload schemas come from the types themselves (`msgspec.json.schema_components`): the health
body, the problem body and every type a route declares have no second, hand-kept definition, and
the constraints of their `msgspec.Meta` annotations are the schemas' constraints. The built-in
endpoints are described here; a `svc.http.routing.Route` added with `create_app(routes=...)` is
described from its declarations:

    Route("/items/{item_id:int}", get_item, responses={200: Item, 404: None}, tags=["items"])
    Route("/items", create_item, methods=["POST"], body=ItemIn, responses={201: Item})
    Route("/items", list_items, query=Page, responses={200: list[Item]})

- `body`: the required `application/json` request body (on every method but GET and HEAD);
- `query`: a Struct, one `in: query` parameter per field (its wire name; required when the field
  has no default); path parameters come from the path's convertors (`str`, `int`, `float`,
  `uuid`, `path`);
- `responses`: status → the JSON body's type, or None: no body below 400, a problem from 400;
  when no status below 400 is declared, an undescribed `default` response stands for success;
- the errors the request path may give are added: 400, 413, 431 and 500 everywhere; 415 and 422
  with a body; 422 with a query Struct or path parameters; 404 with path parameters (405 is
  documented once, in `info`);
- `summary` (the route's name by default), `description`, `tags`; `operationId` is the method and
  the route's name (`get_get_item`), with a number added when that is taken.

Every GET has its HEAD twin: the same parameters and answers, without content. Any other
Starlette route is listed with its methods and an undescribed `default` response; routes with
`include_in_schema=False`, mounts, WebSocket routes and plain ASGI apps routed without `methods`
are not listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import msgspec
from starlette.convertors import Convertor, FloatConvertor, IntegerConvertor, PathConvertor, UUIDConvertor
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.routing import Route as StarletteRoute

from svc.errors import PROBLEM_TYPE, Problem
from svc.health import HEALTH_TYPE, DatabaseHealth, Health, HealthBody, Liveness, Readiness
from svc.http.edge import MAX_HEADER_BYTES, MAX_HEADER_COUNT
from svc.http.headers import security_headers
from svc.http.responses import Encoded
from svc.http.routing import Route
from svc.metrics import MetricsEndpoint
from svc.settings import Details, Settings

__all__ = ["OPENAPI_PATH", "OpenApi", "build_openapi", "openapi_route"]

OPENAPI_PATH = "/openapi.json"
REF = "#/components/schemas/{name}"
_JSON = "application/json"

# Headers the middleware puts on every response, by wire name.
_REQUEST_ID = {
    "description": "The request's id: the inbound `X-Request-ID` when it matches `[A-Za-z0-9._:-]{1,128}`, "
    "else a new one. Also the problem body's `requestId` and every log line's `request_id`.",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}
_SERVER_TIMING = {
    "description": "Server-side timings (W3C Server Timing), when the service adds them.",
    "required": False,
    "schema": {"type": "string"},
}
_NO_STORE = {"description": "Never cached.", "required": True, "schema": {"const": "no-store"}}


def _common_parameters() -> list[dict[str, Any]]:
    """The request headers every operation takes: `X-Request-ID` and the trace context."""
    return [{"$ref": f"#/components/parameters/{name}"} for name in ("X-Request-ID", "traceparent", "tracestate")]


def _header_components(settings: Settings) -> dict[str, Any]:
    headers = {"X-Request-ID": _REQUEST_ID, "Server-Timing": _SERVER_TIMING, "Cache-Control": _NO_STORE}
    for name, value in security_headers(settings):
        headers[name.decode().title()] = {
            "description": "Set on every response.",
            "required": True,
            "schema": {"const": value.decode()},
        }
    return headers


def _common_headers(settings: Settings) -> dict[str, Any]:
    """The headers every response carries, as references to `components.headers`."""
    names = ["X-Request-ID", *(name.decode().title() for name, _ in security_headers(settings)), "Server-Timing"]
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _problem(description: str, headers: Mapping[str, Any], **extra_headers: Any) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**headers, **extra_headers},
        "content": {PROBLEM_TYPE: {"schema": {"$ref": REF.format(name="Problem")}}},
    }


def _shared_responses(settings: Settings) -> dict[str, Any]:
    headers = _common_headers(settings)
    unauthorized_headers = {
        "WWW-Authenticate": {"required": True, "schema": {"const": 'Bearer realm="health"'}},
        "Cache-Control": {"$ref": "#/components/headers/Cache-Control"},
    }
    return {
        "BadRequest": _problem(
            "The request is malformed: a Content-Length that is not a number, a Host outside ALLOWED_HOSTS, "
            "or a request body that is not JSON.",
            headers,
        ),
        "Unauthorized": _problem("A bearer token was sent and is not HEALTH_TOKEN.", headers, **unauthorized_headers),
        "MetricsUnauthorized": _problem(
            "No bearer token, or not HEALTH_TOKEN.",
            headers,
            **{
                **unauthorized_headers,
                "WWW-Authenticate": {"required": True, "schema": {"pattern": '^Bearer realm="metrics"'}},
            },
        ),
        "NotFound": _problem(
            "No resource exists at this path: any path not listed here, or path parameters that name nothing.",
            headers,
        ),
        "MethodNotAllowed": _problem(
            "The method is not allowed for this resource; `Allow` lists those that are.",
            headers,
            Allow={"required": True, "schema": {"type": "string"}},
        ),
        "ContentTooLarge": _problem("The request body is larger than MAX_BODY_BYTES.", headers),
        "UnsupportedMediaType": _problem("The request body is not `application/json`.", headers),
        "UnprocessableContent": _problem(
            "Some values of the request are invalid: `errors` lists each, with a JSON Pointer into the body "
            "(`pointer`) or the parameter's name (`parameter`).",
            headers,
        ),
        "RequestHeaderFieldsTooLarge": _problem(
            f"More than {MAX_HEADER_COUNT} header fields or {MAX_HEADER_BYTES} bytes of them.", headers
        ),
        "InternalServerError": _problem("An unexpected error; details go to the log only.", headers),
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _health_response(description: str, settings: Settings) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**_common_headers(settings), "Cache-Control": {"$ref": "#/components/headers/Cache-Control"}},
        "content": {HEALTH_TYPE.decode(): {"schema": {"$ref": REF.format(name="HealthBody")}}},
    }


def _health_operation(
    summary: str, description: str, ok: str, unavailable: str | None, *, guarded: bool, settings: Settings
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _health_response(ok, settings)}
    if unavailable is not None:
        responses["503"] = _health_response(unavailable, settings)
    operation: dict[str, Any] = {
        "tags": ["health"],
        "summary": summary,
        "description": description,
        "parameters": _common_parameters(),
    }
    if guarded and settings.health_show_details is Details.WHEN_AUTHORIZED:
        # Optional: without a token the answer has no details; a wrong one is a 401.
        operation["security"] = [{}, {"healthToken": []}]
        responses["401"] = _ref("Unauthorized")
    operation["responses"] = responses
    return operation


def _metrics_operation(settings: Settings) -> dict[str, Any]:
    text = {"schema": {"type": "string"}}
    operation: dict[str, Any] = {
        "tags": ["metrics"],
        "summary": "Prometheus metrics",
        "description": "The Prometheus text format, or OpenMetrics when `Accept` asks for it.",
        "parameters": _common_parameters(),
    }
    responses: dict[str, Any] = {
        "200": {
            "description": "The metrics of every worker.",
            "headers": {**_common_headers(settings), "Cache-Control": {"$ref": "#/components/headers/Cache-Control"}},
            "content": {"text/plain": text, "application/openmetrics-text": text},
        }
    }
    if not settings.health_show_details.public:
        # Metrics are public only where health details are: elsewhere the token is required.
        operation["security"] = [{"healthToken": []}]
        responses["401"] = _ref("MetricsUnauthorized")
    operation["responses"] = responses
    return operation


def _builtin(endpoint: Any, settings: Settings) -> dict[str, Any] | None:
    """The description of a built-in endpoint, or None when `endpoint` is not one."""
    details = {
        Details.ALWAYS: " Details (outputs, observed values) are always shown.",
        Details.WHEN_AUTHORIZED: " Details are shown only with `Authorization: Bearer <HEALTH_TOKEN>`.",
        Details.NEVER: " Details are never shown.",
    }[settings.health_show_details]
    if isinstance(endpoint, Liveness):
        return _health_operation(
            "Liveness", "The process answers. No I/O.", "Alive.", None, guarded=False, settings=settings
        )
    if isinstance(endpoint, Readiness):
        return _health_operation(
            "Readiness",
            "200 only while started, not draining, the database answers and its schema is at head." + details,
            "Ready.",
            "Not ready: starting, draining, database down or schema behind.",
            guarded=True,
            settings=settings,
        )
    if isinstance(endpoint, DatabaseHealth):
        return _health_operation(
            "Database health",
            "A bounded, single-flight, cached database check, with pool and migration state." + details,
            "The database answers (`pass`, or `warn` for a slow answer, a busy pool or a schema behind).",
            "The database check failed.",
            guarded=True,
            settings=settings,
        )
    if isinstance(endpoint, Health):
        return _health_operation(
            "Service health",
            "Identity, uptime and the last database and schema results, from cache (no query)." + details,
            "Up; `warn` when the last database or schema check did not pass.",
            None,
            guarded=True,
            settings=settings,
        )
    if isinstance(endpoint, MetricsEndpoint):
        return _metrics_operation(settings)
    if isinstance(endpoint, OpenApi):
        return {
            "tags": ["meta"],
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document.",
                    "headers": {
                        **_common_headers(settings),
                        "Cache-Control": {"required": True, "schema": {"const": "no-cache"}},
                    },
                    "content": {_JSON: {"schema": {"type": "object", "required": ["openapi", "info", "paths"]}}},
                }
            },
        }
    return None


def _with_common_errors(operation: dict[str, Any]) -> dict[str, Any]:
    """Add the answers every operation may give, whatever the endpoint: from the middleware and the 500 net."""
    responses = operation.setdefault("responses", {})
    responses.setdefault("400", _ref("BadRequest"))
    responses.setdefault("413", _ref("ContentTooLarge"))
    responses.setdefault("431", _ref("RequestHeaderFieldsTooLarge"))
    responses.setdefault("500", _ref("InternalServerError"))
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def _head(operation: Mapping[str, Any]) -> dict[str, Any]:
    """The HEAD twin of a GET operation: the same parameters, answers and headers, no body."""
    responses = {
        status: {k: v for k, v in response.items() if k != "content"}
        for status, response in operation["responses"].items()
    }
    return {**operation, "summary": f"{operation['summary']} (headers only)", "responses": responses}


def _methods(route: StarletteRoute) -> list[str]:
    """The route's methods, lower-case; a class-based `HTTPEndpoint` has those it defines a handler for."""
    if route.methods is not None:
        return sorted(m.lower() for m in route.methods)
    endpoint = route.endpoint
    if isinstance(endpoint, type) and issubclass(endpoint, HTTPEndpoint):
        methods = {m for m in ("get", "post", "put", "patch", "delete", "options") if hasattr(endpoint, m)}
        return sorted(methods | ({"head"} if "get" in methods or hasattr(endpoint, "head") else set()))
    return []  # a plain ASGI app takes any method: nothing to list


# What each Starlette convertor matches (`int` and `float` take digits only: no sign, no exponent).
_PATH_SCHEMAS: dict[type[Convertor[Any]], dict[str, Any]] = {
    IntegerConvertor: {"type": "integer", "minimum": 0},
    FloatConvertor: {"type": "number", "minimum": 0},
    UUIDConvertor: {"type": "string", "format": "uuid"},
    PathConvertor: {"type": "string"},
}
_SEGMENT = {"type": "string", "pattern": "^[^/]+$"}  # `str`, and any convertor of the service's own


def _declared_types(route: Route) -> list[Any]:
    return [t for t in (route.body, route.query, *route.responses.values()) if t is not None]


class _Declared:
    """Operations of svc `Route`s from their declarations, with the schemas of every declared type made at once."""

    def __init__(self, routes: Iterable[Route], settings: Settings) -> None:
        types = dict.fromkeys([HealthBody, Problem, *(t for route in routes for t in _declared_types(route))])
        schemas, self.components = msgspec.json.schema_components(list(types), ref_template=REF)
        self.schemas = dict(zip(types, schemas, strict=True))
        self.headers = _common_headers(settings)

    def operation(self, route: Route, method: str) -> dict[str, Any]:
        """The operation `method` of `route` (a lower-case method other than HEAD)."""
        operation: dict[str, Any] = {"summary": route.summary or route.name}
        if route.description:
            operation["description"] = route.description
        if route.tags:
            operation["tags"] = list(route.tags)
        operation["parameters"] = [
            *_common_parameters(),
            *self._path_parameters(route),
            *self._query_parameters(route),
        ]
        responses = {str(status): self._response(status, t) for status, t in sorted(route.responses.items())}
        if not any(status < 400 for status in route.responses):
            responses["default"] = {"description": "Not described."}
        takes_body = route.body is not None and method != "get"
        if takes_body:
            operation["requestBody"] = {"required": True, "content": {_JSON: {"schema": self.schemas[route.body]}}}
            responses.setdefault("415", _ref("UnsupportedMediaType"))
        if takes_body or route.query is not None or route.param_convertors:
            responses.setdefault("422", _ref("UnprocessableContent"))
        if route.param_convertors:
            responses.setdefault("404", _ref("NotFound"))
        operation["responses"] = responses
        return operation

    def _response(self, status: int, body: Any) -> dict[str, Any]:
        try:
            description = HTTPStatus(status).phrase
        except ValueError:
            description = f"Status {status}."
        if body is None and status >= 400:
            return _problem(description, self.headers)
        response: dict[str, Any] = {"description": description, "headers": self.headers}
        if body is not None:
            response["content"] = {_JSON: {"schema": self.schemas[body]}}
        return response

    @staticmethod
    def _path_parameters(route: Route) -> list[dict[str, Any]]:
        return [
            {"name": name, "in": "path", "required": True, "schema": _PATH_SCHEMAS.get(type(convertor), _SEGMENT)}
            for name, convertor in route.param_convertors.items()
        ]

    def _query_parameters(self, route: Route) -> list[dict[str, Any]]:
        if route.query is None:
            return []
        # The Struct's own schema, by reference: its properties carry the fields' constraints and defaults.
        name = self.schemas[route.query]["$ref"].rpartition("/")[2]
        properties = self.components[name]["properties"]
        return [
            {
                "name": field.encode_name,
                "in": "query",
                "required": field.required,
                "schema": properties[field.encode_name],
            }
            for field in msgspec.structs.fields(route.query)
        ]


def _operation_id(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... when taken; recorded in `taken`."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    taken.add(candidate)
    return candidate


def _route_path_item(route: StarletteRoute, declared: _Declared, settings: Settings, taken: set[str]) -> dict[str, Any]:
    methods = _methods(route)
    builtin = _builtin(route.endpoint, settings)
    if builtin is not None:
        item = {"get": _with_common_errors(builtin)}
    elif isinstance(route, Route):
        item = {m: _with_common_errors(declared.operation(route, m)) for m in methods if m != "head"}
    else:
        item = {
            m: {"summary": route.name, "responses": {"default": {"description": "Not described."}}} for m in methods
        }
    if "head" in methods and "get" in item:
        item["head"] = _head(item["get"])
    return {m: {**item[m], "operationId": _operation_id(f"{m}_{route.name}", taken)} for m in methods if m in item}


def build_openapi(settings: Settings, routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing `routes` (Starlette `Route`s in the schema; others are skipped)."""
    listed = [r for r in routes if isinstance(r, StarletteRoute) and r.include_in_schema]
    declared = _Declared([r for r in listed if isinstance(r, Route)], settings)
    paths: dict[str, Any] = {}
    taken: set[str] = set()
    for route in listed:
        paths.setdefault(route.path_format, {}).update(_route_path_item(route, declared, settings, taken))
    components: dict[str, Any] = {
        "schemas": declared.components,
        "responses": _shared_responses(settings),
        "headers": _header_components(settings),
        "parameters": {
            "X-Request-ID": {
                "name": "X-Request-ID",
                "in": "header",
                "required": False,
                "description": "The caller's id for the request: echoed when it matches `[A-Za-z0-9._:-]{1,128}`, "
                "replaced by a new one otherwise (never an error).",
                "schema": {"type": "string"},
            },
            "traceparent": {
                "name": "traceparent",
                "in": "header",
                "required": False,
                "description": "The caller's W3C Trace Context (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`): "
                "the request joins its trace (its log lines carry `trace_id` and `span_id`; with tracing on, its span "
                "is a child of the caller's). An invalid value is ignored (never an error, never echoed).",
                "schema": {"type": "string"},
            },
            "tracestate": {
                "name": "tracestate",
                "in": "header",
                "required": False,
                "description": "Vendor trace data that goes with `traceparent` (W3C Trace Context); kept when at "
                "most 512 printable characters, ignored without a valid `traceparent`.",
                "schema": {"type": "string"},
            },
        },
    }
    if not settings.health_show_details.public:
        components["securitySchemes"] = {
            "healthToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "HEALTH_TOKEN: health details and metrics.",
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "svc",
            "version": settings.app_version,
            "description": (
                "Errors are RFC 9457 `application/problem+json` (schema `Problem`): any path not listed "
                "answers `NotFound`, any method not listed `MethodNotAllowed`. Every response carries "
                "`X-Request-ID` and the security headers."
            ),
        },
        "paths": paths,
        "components": components,
    }


class OpenApi:
    """`/openapi.json`: the document, encoded once."""

    def __init__(self) -> None:
        self.response = Encoded(b"", content_type=_JSON.encode())

    def encode(self, document: Mapping[str, Any]) -> None:
        # The document changes only with a deploy: revalidate, never serve a stale one.
        headers = [(b"cache-control", b"no-cache")]
        self.response = Encoded(msgspec.json.encode(document), headers=headers, content_type=_JSON.encode())

    async def __call__(self, request: Request) -> Encoded:
        return self.response


def openapi_route(settings: Settings, routes: Sequence[BaseRoute]) -> Route:
    """The `/openapi.json` route, its document describing `routes` and itself, encoded now."""
    endpoint = OpenApi()
    route = Route(OPENAPI_PATH, endpoint, name="openapi")
    endpoint.encode(build_openapi(settings, [*routes, route]))
    return route
