"""/openapi.json: a valid OpenAPI 3.1 document generated from the Structs, and live responses that keep to it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from svc.app import create_app
from svc.errors import Problem
from svc.health import HealthBody
from svc.settings import Environment, Settings
from tests.conftest import serve

TOKEN = "openapi-health-token-0123"


class Item(msgspec.Struct):
    """A payload of a route added by a user."""

    name: str
    count: int


async def get_item(request: Request) -> Response:
    if request.query_params.get("fail"):
        raise RuntimeError("unexpected")
    return Response(msgspec.json.encode(Item("a", 1)), media_type="application/json")


get_item.openapi = {  # type: ignore[attr-defined]
    "get": {
        "summary": "One item.",
        "responses": {"200": {"description": "The item.", "content": {"application/json": {"schema": Item}}}},
    }
}


async def undescribed(request: Request) -> Response:
    return Response("ok")


class Counter(HTTPEndpoint):
    openapi = {"put": {"summary": "Set the count.", "responses": {"204": {"description": "Set."}}}}

    async def get(self, request: Request) -> Response:
        return Response("1")

    async def put(self, request: Request) -> Response:
        return Response(status_code=204)


USER_ROUTES = [
    Route("/items/{item_id:int}", get_item),
    Route("/plain", undescribed, methods=["POST"]),
    Route("/counter", Counter),
]


class Contract:
    """The document, and a check of one live response against it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.validators = jsonschema_rs.validator_map_for(document)

    def resolve(self, obj: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in obj:
            node: Any = self.document
            for part in obj["$ref"].removeprefix("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            obj = node
        return obj

    def validator(self, schema: dict[str, Any]) -> Any:
        return self.validators.get(schema["$ref"]) if "$ref" in schema else jsonschema_rs.validator_for(schema)

    def expected(self, method: str, path: str, status: int) -> dict[str, Any]:
        """The response object the document gives for `status` of `method path` (a template path for `path`)."""
        item = self.document["paths"].get(path)
        if item is None:
            return self.resolve({"$ref": "#/components/responses/NotFound"})
        operation = item.get(method.lower())
        if operation is None:
            return self.resolve({"$ref": "#/components/responses/MethodNotAllowed"})
        responses = operation["responses"]
        spec = responses.get(str(status), responses.get("default"))
        assert spec is not None, f"{method} {path}: status {status} is not documented"
        return self.resolve(spec)

    def check(self, response: httpx.Response, path: str | None = None) -> None:
        method = response.request.method
        spec = self.expected(method, path or response.request.url.path, response.status_code)
        for name, reference in spec.get("headers", {}).items():
            header = self.resolve(reference)
            if header.get("required"):
                assert name in response.headers, f"{name} is required on {method} {response.status_code}"
            if name in response.headers:
                self.validator(header["schema"]).validate(response.headers[name])
        content = spec.get("content", {})
        if method == "HEAD":
            assert response.content == b""
            return
        if not content:
            return
        media_type = response.headers["content-type"].split(";")[0]
        assert media_type in content, f"{media_type} is not documented for {method} {response.status_code}"
        body = response.json() if media_type.endswith("json") else response.text
        self.validator(content[media_type]["schema"]).validate(body)


@dataclass
class Scenario:
    settings: dict[str, Any]
    method: str
    path: str
    status: int
    headers: dict[str, str] | None = None
    content: bytes | None = None
    template: str | None = None  # the document's path, when `path` fills in a template


HEALTH_PATHS = ["/health", "/health/live", "/health/ready", "/health/db", "/openapi.json"]
GUARDED = ["/health", "/health/ready", "/health/db"]
AUTHORIZED = {"health_show_details": "when_authorized", "health_token": TOKEN}
SCENARIOS = {
    **{f"{m} {p}": Scenario({}, m, p, 200) for p in HEALTH_PATHS for m in ("GET", "HEAD")},
    **{f"{p} without a token": Scenario(AUTHORIZED, "GET", p, 200) for p in GUARDED},
    **{
        f"{p} with the token": Scenario(AUTHORIZED, "GET", p, 200, headers={"Authorization": f"Bearer {TOKEN}"})
        for p in GUARDED
    },
    **{
        f"{m} {p} with a wrong token": Scenario(AUTHORIZED, m, p, 401, headers={"Authorization": "Bearer wrong"})
        for p in GUARDED
        for m in ("GET", "HEAD")
    },
    "metrics": Scenario({}, "GET", "/metrics", 200),
    "metrics without a token": Scenario(AUTHORIZED, "GET", "/metrics", 401),
    "metrics with the token": Scenario(
        AUTHORIZED, "GET", "/metrics", 200, headers={"Authorization": f"Bearer {TOKEN}"}
    ),
    "OpenMetrics": Scenario({}, "GET", "/metrics", 200, headers={"Accept": "application/openmetrics-text"}),
    "deployed (HSTS)": Scenario({"app_env": Environment.STAGING, **AUTHORIZED}, "GET", "/health", 200),
    "unknown path": Scenario({}, "GET", "/no/such/path", 404),
    "unknown method": Scenario({}, "DELETE", "/health", 405),
    "body too large": Scenario({"max_body_bytes": 16}, "GET", "/health/live", 413, content=b"x" * 17),
    "Content-Length not a number": Scenario({}, "GET", "/health", 400, headers={"Content-Length": "ten"}),
    "Host not allowed": Scenario({"allowed_hosts": ("api.example.com",)}, "GET", "/health", 400),
    "Host allowed": Scenario(
        {"allowed_hosts": ("api.example.com",)}, "GET", "/health", 200, headers={"Host": "api.example.com"}
    ),
    "user route": Scenario({}, "GET", "/items/7", 200, template="/items/{item_id}"),
    "user route error": Scenario({}, "GET", "/items/7?fail=1", 500, template="/items/{item_id}"),
    "undescribed user route": Scenario({}, "POST", "/plain", 200),
    "class-based user route": Scenario({}, "PUT", "/counter", 204),
}


async def fetch_contract(client: httpx.AsyncClient) -> Contract:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return Contract(response.json())


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_live_responses_conform_to_the_document(
    make_settings: Callable[..., Settings], scenario: Scenario
) -> None:
    app = create_app(make_settings(**scenario.settings), routes=USER_ROUTES)
    contract = Contract(built_document(app))
    async with serve(app) as client:
        response = await client.request(
            scenario.method, scenario.path, headers=scenario.headers, content=scenario.content
        )
    assert response.status_code == scenario.status, response.text
    contract.check(response, scenario.template)


@pytest.mark.parametrize("path", ["/health/db", "/health/ready"])
async def test_database_down_answers_conform_to_the_document(
    make_settings: Callable[..., Settings], refused_port: int, path: str
) -> None:
    url = f"postgresql+asyncpg://svc@127.0.0.1:{refused_port}/svc"
    settings = make_settings(database_url=url, health_db_timeout=0.3, db_connect_timeout=0.3)
    async with serve(create_app(settings)) as client:
        contract = await fetch_contract(client)
        response = await client.get(path)
        health = await client.get("/health")
    assert response.status_code == 503
    contract.check(response)
    assert health.json()["status"] == "warn"
    contract.check(health)


SETTINGS_VARIANTS = {
    "development": {},
    "when_authorized": AUTHORIZED,
    "never": {"health_show_details": "never"},
    "staging": {"app_env": Environment.STAGING, "allowed_hosts": ("api.example.com", "*.example.org")},
}


@pytest.mark.parametrize("overrides", SETTINGS_VARIANTS.values(), ids=SETTINGS_VARIANTS.keys())
def test_the_document_is_valid_openapi_3_1(make_settings: Callable[..., Settings], overrides: dict[str, Any]) -> None:
    document = built_document(create_app(make_settings(**overrides), routes=USER_ROUTES))
    errors = [str(error) for error in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []
    assert document["openapi"].startswith("3.1")
    # Every reference resolves.
    contract = Contract(document)
    for ref in {m for m in json.dumps(document).split('"') if m.startswith("#/")}:
        contract.resolve({"$ref": ref})


def built_document(app: Any) -> dict[str, Any]:
    [route] = [r for r in app.routes if getattr(r, "path", None) == "/openapi.json"]
    document: dict[str, Any] = json.loads(route.endpoint.response.body)
    return document


@pytest.mark.parametrize("struct", [HealthBody, Problem, Item])
def test_payload_schemas_are_generated_from_the_structs(
    make_settings: Callable[..., Settings], struct: type[msgspec.Struct]
) -> None:
    schemas = built_document(create_app(make_settings(), routes=USER_ROUTES))["components"]["schemas"]
    fields = msgspec.structs.fields(struct)
    schema = schemas[struct.__name__]
    assert set(schema["properties"]) == {f.encode_name for f in fields}
    assert set(schema["required"]) == {f.encode_name for f in fields if f.required}
    assert schema["description"] == struct.__doc__


def test_every_route_and_method_is_described(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(), routes=USER_ROUTES)
    paths = built_document(app)["paths"]
    routes = {r.path_format: {m.lower() for m in r.methods} for r in app.routes if isinstance(r, Route) and r.methods}
    assert {path: set(item) for path, item in paths.items()} == {**routes, "/counter": {"get", "head", "put"}}
    assert "/openapi.json" in routes
    assert paths["/counter"]["put"]["responses"]["204"] == {"description": "Set."}
    assert paths["/plain"]["post"]["responses"] == {"default": {"description": "Not described."}}
    assert paths["/items/{item_id}"]["get"]["responses"]["500"] == {
        "$ref": "#/components/responses/InternalServerError"
    }


@pytest.mark.parametrize(
    ("overrides", "guarded"),
    [({}, False), ({"health_show_details": "never"}, False), (AUTHORIZED, True)],
    ids=["always", "never", "when_authorized"],
)
def test_the_bearer_token_and_401_are_documented_only_when_details_need_it(
    make_settings: Callable[..., Settings], overrides: dict[str, Any], guarded: bool
) -> None:
    document = built_document(create_app(make_settings(**overrides)))
    for path in GUARDED:
        operation = document["paths"][path]["get"]
        assert ("401" in operation["responses"]) is guarded
        assert ("security" in operation) is guarded
    assert "401" not in document["paths"]["/health/live"]["get"]["responses"]


@pytest.mark.parametrize(("app_env", "hsts"), [(Environment.TEST, False), (Environment.PRODUCTION, True)])
def test_hsts_is_documented_only_where_it_is_sent(
    make_settings: Callable[..., Settings], app_env: Environment, hsts: bool
) -> None:
    document = built_document(create_app(make_settings(app_env=app_env, secret_key="k" * 8 + "x" * 32)))
    headers = document["paths"]["/health"]["get"]["responses"]["200"]["headers"]
    assert ("Strict-Transport-Security" in headers) is hsts


async def test_the_document_is_encoded_once_and_head_has_the_same_headers(client: httpx.AsyncClient) -> None:
    first, second = await client.get("/openapi.json"), await client.get("/openapi.json")
    head = await client.head("/openapi.json")
    assert first.content == second.content
    assert first.headers["content-type"] == "application/json"
    assert first.headers["cache-control"] == "no-cache"
    assert int(first.headers["content-length"]) == len(first.content)
    assert head.content == b""
    per_request = {"x-request-id", "server-timing"}
    assert {k: v for k, v in head.headers.items() if k not in per_request} == {
        k: v for k, v in first.headers.items() if k not in per_request
    }
