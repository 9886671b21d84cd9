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
from starlette.routing import BaseRoute
from starlette.routing import Route as StarletteRoute

from svc.app import create_app
from svc.errors import Problem
from svc.health import HealthBody
from svc.http.routing import Route
from svc.settings import Environment, Settings
from tests import resource_app
from tests.conftest import serve
from tests.resource_app import Item, ItemIn

TOKEN = "openapi-health-token-0123"
JSON = {"Content-Type": "application/json"}


async def fail(request: Request) -> Response:
    raise RuntimeError("unexpected")


async def undescribed(request: Request) -> Response:
    return Response("ok")


class Counter(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return Response("1")

    async def put(self, request: Request) -> Response:
        return Response(status_code=204)


def user_routes() -> list[BaseRoute]:
    """The sample resource (tests/resource_app.py, a store of its own), and routes that declare nothing."""
    return [
        *resource_app.routes(),
        Route("/fail", fail, responses={200: Item}),
        Route("/undeclared", undescribed),
        Route("/hidden", undescribed, include_in_schema=False),
        StarletteRoute("/plain", undescribed, methods=["POST"]),
        StarletteRoute("/counter", Counter),
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
        if "$ref" in schema:
            return self.validators.get(schema["$ref"])
        # An inline schema (`list[Item]`) may refer to components: they resolve against the document's.
        return jsonschema_rs.validator_for({**schema, "components": self.document["components"]})

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
    "create": Scenario({}, "POST", "/items", 201, JSON, b'{"name": "a", "count": 2}'),
    "body out of bounds": Scenario({}, "POST", "/items", 422, JSON, b'{"name": "", "count": 1001}'),
    "unknown body field": Scenario({}, "POST", "/items", 422, JSON, b'{"name": "a", "colour": "red"}'),
    "body not JSON": Scenario({}, "POST", "/items", 400, JSON, b'{"name": '),
    "body of another media type": Scenario({}, "POST", "/items", 415, {"Content-Type": "text/plain"}, b"a"),
    "no body": Scenario({}, "POST", "/items", 415),
    **{f"{m} list": Scenario({}, m, "/items?limit=5&offset=1", 200) for m in ("GET", "HEAD")},
    **{f"{m} query out of bounds": Scenario({}, m, "/items?limit=0", 422) for m in ("GET", "HEAD")},
    "required query parameter": Scenario({}, "GET", "/search?name=a", 200),
    "required query parameter missing": Scenario({}, "GET", "/search", 422),
    **{
        f"{m} missing item": Scenario({}, m, "/items/7", 404, template="/items/{item_id}")
        for m in ("GET", "HEAD", "DELETE")
    },
    "path parameter not matching its convertor": Scenario({}, "GET", "/items/seven", 404),
    "uuid path parameter": Scenario(
        {}, "GET", "/tags/00000000-0000-4000-8000-000000000002", 204, template="/tags/{tag_id}"
    ),
    "uuid path parameter naming nothing": Scenario(
        {}, "GET", "/tags/00000000-0000-4000-8000-000000000003", 404, template="/tags/{tag_id}"
    ),
    "declared route error": Scenario({}, "GET", "/fail", 500),
    "undeclared svc route": Scenario({}, "GET", "/undeclared", 200),
    "undescribed Starlette route": Scenario({}, "POST", "/plain", 200),
    "class-based Starlette route": Scenario({}, "PUT", "/counter", 204),
}


async def fetch_contract(client: httpx.AsyncClient) -> Contract:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return Contract(response.json())


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_live_responses_conform_to_the_document(
    make_settings: Callable[..., Settings], scenario: Scenario
) -> None:
    app = create_app(make_settings(**scenario.settings), routes=user_routes())
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
    document = built_document(create_app(make_settings(**overrides), routes=user_routes()))
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


async def test_an_item_conforms_to_the_document_through_its_life(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(), routes=user_routes())
    contract = Contract(built_document(app))
    async with serve(app) as client:
        created = await client.post("/items", json={"name": "lamp", "labels": ["a"]})
        location = created.headers["location"]
        answers = [
            (created, None),
            (await client.get(location), "/items/{item_id}"),
            (await client.head(location), "/items/{item_id}"),
            (await client.get("/items"), None),
            (await client.get("/search", params={"name": "am"}), None),
            (await client.delete(location), "/items/{item_id}"),
            (await client.get(location), "/items/{item_id}"),
        ]
    assert [r.status_code for r, _ in answers] == [201, 200, 200, 200, 200, 204, 404]
    assert answers[1][0].json() == {"id": 1, "name": "lamp", "count": 0, "labels": ["a"]}
    assert answers[4][0].json() == [answers[1][0].json()]
    for response, template in answers:
        contract.check(response, template)


@pytest.fixture
def document(make_settings: Callable[..., Settings]) -> dict[str, Any]:
    """The document of an app with the sample resource and the routes that declare nothing."""
    return built_document(create_app(make_settings(), routes=user_routes()))


@pytest.mark.parametrize("struct", [HealthBody, Problem, ItemIn, Item])
def test_payload_schemas_are_generated_from_the_structs(document: dict[str, Any], struct: type[msgspec.Struct]) -> None:
    fields = msgspec.structs.fields(struct)
    schema = document["components"]["schemas"][struct.__name__]
    assert set(schema["properties"]) == {f.encode_name for f in fields}
    assert set(schema["required"]) == {f.encode_name for f in fields if f.required}
    assert schema["description"] == struct.__doc__


def test_the_structs_constraints_are_the_schemas_constraints(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["ItemIn"]
    assert schema["additionalProperties"] is False  # forbid_unknown_fields
    assert schema["properties"] == {
        "name": {"description": "What the item is called.", "type": "string", "minLength": 1, "maxLength": 40},
        "count": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0},
        "labels": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 5, "default": []},
    }


def test_a_declared_body_is_a_required_json_request_body(document: dict[str, Any]) -> None:
    operation = document["paths"]["/items"]["post"]
    assert operation["requestBody"] == {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ItemIn"}}},
    }
    assert operation["responses"]["201"]["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/Item"}}
    }


@pytest.mark.parametrize(
    ("path", "parameters"),
    [
        (
            "/items",
            [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                },
                {
                    "name": "offset",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0, "default": 0},
                },
            ],
        ),
        (
            "/search",
            [
                {
                    "name": "name",
                    "in": "query",
                    "required": True,
                    "schema": {
                        "description": "What the item is called.",
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 40,
                    },
                }
            ],
        ),
        (
            "/items/{item_id}",
            [{"name": "item_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
        ),
    ],
    ids=["query with defaults", "required query", "path"],
)
def test_query_structs_and_path_convertors_are_parameters(
    document: dict[str, Any], path: str, parameters: list[dict[str, Any]]
) -> None:
    for method in ("get", "head"):
        assert document["paths"][path][method]["parameters"] == [
            {"$ref": "#/components/parameters/X-Request-ID"},
            {"$ref": "#/components/parameters/traceparent"},
            {"$ref": "#/components/parameters/tracestate"},
            *parameters,
        ]


def test_every_operation_that_takes_a_request_id_takes_the_trace_context_headers(document: dict[str, Any]) -> None:
    described = [
        [p.get("$ref") for p in operation["parameters"]]
        for path_item in document["paths"].values()
        for operation in path_item.values()
        if {"$ref": "#/components/parameters/X-Request-ID"} in operation.get("parameters", [])
    ]
    assert len(described) > 10
    for refs in described:
        assert "#/components/parameters/traceparent" in refs
        assert "#/components/parameters/tracestate" in refs
    traceparent = document["components"]["parameters"]["traceparent"]
    assert traceparent["in"] == "header"
    assert not traceparent["required"]


@pytest.mark.parametrize(
    ("convertor", "schema"),
    [
        ("str", {"type": "string", "pattern": "^[^/]+$"}),
        ("path", {"type": "string"}),
        ("int", {"type": "integer", "minimum": 0}),
        ("float", {"type": "number", "minimum": 0}),
        ("uuid", {"type": "string", "format": "uuid"}),
    ],
)
def test_path_parameters_take_their_schema_from_the_convertor(
    make_settings: Callable[..., Settings], convertor: str, schema: dict[str, Any]
) -> None:
    routes = [Route(f"/things/{{thing:{convertor}}}", undescribed, responses={204: None})]
    operation = built_document(create_app(make_settings(), routes=routes))["paths"]["/things/{thing}"]["get"]
    declared = [p for p in operation["parameters"] if "$ref" not in p]
    assert declared == [{"name": "thing", "in": "path", "required": True, "schema": schema}]


REQUEST_ERRORS = {"400", "404", "413", "415", "422", "431", "500"}


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", "/items", {"400", "413", "415", "422", "431", "500"}),
        ("get", "/items", {"400", "413", "422", "431", "500"}),
        ("get", "/items/{item_id}", {"400", "404", "413", "422", "431", "500"}),
        ("delete", "/items/{item_id}", {"400", "404", "413", "422", "431", "500"}),
        ("get", "/undeclared", {"400", "413", "431", "500"}),
        ("get", "/health", {"400", "413", "431", "500"}),
    ],
    ids=["body", "query", "path", "path, not GET", "nothing declared", "built-in"],
)
def test_the_errors_a_request_may_get_are_documented(
    document: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    assert set(document["paths"][path][method]["responses"]) & REQUEST_ERRORS == statuses


@pytest.mark.parametrize(
    ("method", "path", "responses"),
    [
        ("get", "/items/{item_id}", {"200": "Item", "404": None}),
        ("delete", "/items/{item_id}", {"204": None, "404": None}),
        ("get", "/items", {"200": "array"}),
    ],
)
def test_declared_responses_are_documented(
    document: dict[str, Any], method: str, path: str, responses: dict[str, str | None]
) -> None:
    documented = document["paths"][path][method]["responses"]
    for status, body in responses.items():
        content = documented[status].get("content")
        if body is None and int(status) < 400:
            assert content is None
        elif body is None:
            assert content == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        else:
            assert body in json.dumps(content["application/json"]["schema"])
    assert "default" not in documented


def test_summary_description_and_tags_are_the_declared_ones(document: dict[str, Any]) -> None:
    listing, create = document["paths"]["/items"]["get"], document["paths"]["/items"]["post"]
    assert (listing["summary"], listing["description"], listing["tags"]) == ("List items", "Oldest first.", ["items"])
    assert (create["summary"], "description" in create) == ("create_item", False)  # the route's name


def test_every_get_has_a_head_twin_without_content(document: dict[str, Any]) -> None:
    gets = {path: item for path, item in document["paths"].items() if "get" in item}
    assert {"/health", "/openapi.json", "/items", "/items/{item_id}", "/search", "/undeclared", "/counter"} <= set(gets)
    for path, item in gets.items():
        get, head = item["get"], item["head"]
        assert head.get("parameters") == get.get("parameters"), path
        assert set(head["responses"]) == set(get["responses"]), path
        assert not any("content" in response for response in head["responses"].values()), path
        assert head["operationId"] != get["operationId"], path


def test_operation_ids_are_the_method_and_route_name_and_unique(make_settings: Callable[..., Settings]) -> None:
    def build() -> dict[str, Any]:
        routes = [*user_routes(), Route("/again", undescribed, name="undescribed")]
        return built_document(create_app(make_settings(), routes=routes))

    document = build()
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert ids == [op["operationId"] for item in build()["paths"].values() for op in item.values()]
    items = document["paths"]["/items/{item_id}"]
    assert (items["get"]["operationId"], items["head"]["operationId"]) == ("get_get_item", "head_get_item")
    assert document["paths"]["/again"]["get"]["operationId"] == "get_undescribed_2"


def test_every_route_and_method_is_described(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(), routes=user_routes())
    routes: dict[str, set[str]] = {}
    for route in app.routes:
        if isinstance(route, StarletteRoute) and route.methods and route.include_in_schema:
            routes.setdefault(route.path_format, set()).update(m.lower() for m in route.methods)
    paths = built_document(app)["paths"]
    assert {path: set(item) for path, item in paths.items()} == {**routes, "/counter": {"get", "head", "put"}}
    assert "/openapi.json" in routes
    assert "/hidden" not in paths
    undescribed = {"default": {"description": "Not described."}}
    assert [op["responses"] for op in paths["/counter"].values()] == [undescribed] * 3
    assert paths["/plain"]["post"]["responses"] == undescribed
    assert paths["/undeclared"]["get"]["responses"]["default"] == {"description": "Not described."}


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
