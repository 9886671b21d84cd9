"""Typed requests (issue 14): JSON bodies, query and path parameters into msgspec types, and every error they can be.

A 415, 400, 413 or 422 problem, the 422 listing every invalid part with a JSON Pointer into the body or the
parameter's name, in words that never repeat what the client sent.
"""

from __future__ import annotations

import datetime
import enum
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, NewType

import httpx
import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response

import svc
from svc import Route, decode_body, decode_path, decode_query, json_response
from svc.app import create_app
from svc.errors import MAX_DETAIL, MAX_ERRORS
from svc.http.decode import MAX_NAME
from svc.settings import Settings
from tests.conftest import ROOT, scrubbed_environ, serve

UserId = NewType("UserId", int)
MARKER = "SECRET-MARKER-3f9a"  # sent in values; must never come back
MAX_BODY_BYTES = 4096


class Tag(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]


class NoteIn(msgspec.Struct, forbid_unknown_fields=True, rename={"due_at": "dueAt"}):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
    priority: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3
    status: Literal["draft", "published"] = "draft"
    code: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] | None = None
    due_at: datetime.datetime | None = None
    tags: Annotated[list[Tag], msgspec.Meta(max_length=2)] = []
    attributes: dict[str, Annotated[int, msgspec.Meta(ge=0)]] = {}
    pair: tuple[int, str] | None = None


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Inner(msgspec.Struct, tag="inner"):
    n: Annotated[int, msgspec.Meta(ge=0)]


class Point(msgspec.Struct, array_like=True):
    x: int
    y: int


class Extras(msgspec.Struct):
    colour: Colour | None = None
    labels: Annotated[set[str], msgspec.Meta(max_length=2)] = set()
    inner: Inner | msgspec.UnsetType = msgspec.UNSET
    owner: UserId | None = None
    points: list[Point] = []


class Period(msgspec.Struct):
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")  # quotes the input: never sent


class Page(msgspec.Struct):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    tag: list[str] = []
    active: bool | None = None


class Filter(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    q: str
    sort_by: Literal["created", "title"] = "created"
    ids: Annotated[list[int], msgspec.Meta(max_length=3)] = []


class ItemKey(msgspec.Struct):
    item_id: Annotated[int, msgspec.Meta(ge=1)]
    slug: Annotated[str, msgspec.Meta(max_length=8)]


class ThingKey(msgspec.Struct):
    thing_id: uuid.UUID


async def create_note(request: Request) -> Response:
    return json_response(await decode_body(request, NoteIn), 201)


async def create_tags(request: Request) -> Response:
    return json_response(await decode_body(request, list[Tag]))


async def create_extras(request: Request) -> Response:
    return json_response(await decode_body(request, Extras))


async def create_period(request: Request) -> Response:
    return json_response(await decode_body(request, Period))


async def list_page(request: Request) -> Response:
    return json_response(decode_query(request, Page))


async def list_filtered(request: Request) -> Response:
    return json_response(decode_query(request, Filter))


async def get_item(request: Request) -> Response:
    return json_response(decode_path(request, ItemKey))


async def get_thing(request: Request) -> Response:
    return json_response(decode_path(request, ThingKey))


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    routes = [
        Route("/notes", create_note, methods=["POST"], body=NoteIn),
        Route("/tags", create_tags, methods=["POST"]),
        Route("/extras", create_extras, methods=["POST"]),
        Route("/periods", create_period, methods=["POST"], body=Period),
        Route("/page", list_page, query=Page),
        Route("/filter", list_filtered, query=Filter),
        Route("/items/{item_id:int}/{slug}", get_item),
        Route("/things/{thing_id}", get_thing),
        Route("/broken/{slug}", get_item),  # ItemKey wants an item_id this path does not have
    ]
    app = create_app(make_settings(max_body_bytes=MAX_BODY_BYTES), routes=routes)
    async with serve(app) as c:
        yield c


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def field_errors(response: httpx.Response) -> list[tuple[str, str]]:
    """A 422's errors as (pointer or parameter, detail)."""
    body = problem(response, 422)
    assert body["title"] == "Unprocessable Content"
    for error in body["errors"]:
        assert len(error) == 2  # a detail and exactly one of pointer, parameter
    return [(error.get("pointer") or error["parameter"], error["detail"]) for error in body["errors"]]


def post(client: httpx.AsyncClient, path: str, content: bytes | str, content_type: str = "application/json") -> Any:
    return client.post(path, content=content, headers={"Content-Type": content_type})


# --- Body: media type, syntax, size -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        'Application/JSON;charset="UTF-8"',
        "application/merge-patch+json",
        "application/vnd.example+json",
    ],
)
async def test_a_valid_json_body_decodes_with_defaults(client: httpx.AsyncClient, content_type: str) -> None:
    response = await post(client, "/notes", '{"title": "Groceries", "tags": [{"name": "home"}]}', content_type)
    assert response.status_code == 201, response.text
    assert response.json() == {
        "title": "Groceries",
        "priority": 3,
        "status": "draft",
        "code": None,
        "dueAt": None,
        "tags": [{"name": "home"}],
        "attributes": {},
        "pair": None,
    }


@pytest.mark.parametrize("priority", ["4.0", "4e0", "0.4e1"])
async def test_an_integral_number_written_as_a_float_is_an_int(client: httpx.AsyncClient, priority: str) -> None:
    # JSON has one number type: 4.0 is the integer 4 (JSON Schema agrees), though msgspec's int refuses it.
    response = await post(client, "/notes", f'{{"title": "Groceries", "priority": {priority}}}', "application/json")
    assert response.status_code == 201, response.text
    assert response.json()["priority"] == 4


async def test_a_fractional_number_is_not_an_int(client: httpx.AsyncClient) -> None:
    response = await post(client, "/notes", '{"title": "Groceries", "priority": 4.5}', "application/json")
    assert response.status_code == 422
    assert [e["pointer"] for e in response.json()["errors"]] == ["#/priority"]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/+json",
        "text/json",
        "application/json; charset=latin-1",
        f"application/{MARKER}",
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await client.post("/notes", content=b'{"title": "ok"}', headers=headers)
    body = problem(response, 415)
    assert body["title"] == "Unsupported Media Type"
    assert "application/json" in body["detail"]
    assert MARKER not in response.text


async def test_a_compressed_body_is_415_with_accept_encoding(client: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = await client.post("/notes", content=b"\x1f\x8b", headers=headers)
    problem(response, 415)
    assert response.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"", "The request body is empty: a JSON value is required."),
        (b"{", "The request body is not valid JSON: it ends too soon."),
        (f'{{"title": {MARKER}}}'.encode(), "The request body is not valid JSON: invalid character at byte 10."),
        (f'{{"title": "ok"}} {MARKER}'.encode(), "The request body is not valid JSON: trailing characters at byte 17."),
        (b'{"title": "\xff"}', "The request body is not valid JSON: it is not UTF-8."),
        # A validation error comes first in the body: still a 400, the syntax is checked before the values.
        (
            f'{{"priority": "x", "title": {MARKER}'.encode(),
            "The request body is not valid JSON: invalid character at byte 27.",
        ),
        (b"[" * 2000 + b"]" * 2000, "The request body is nested too deeply."),
    ],
    ids=["empty", "truncated", "bad-token", "trailing", "bad-utf8", "after-invalid-value", "too-deep"],
)
async def test_a_body_that_is_not_json_is_400_without_echo(
    client: httpx.AsyncClient, content: bytes, detail: str
) -> None:
    response = await post(client, "/notes", content)
    assert problem(response, 400)["detail"] == detail
    assert MARKER not in response.text


async def test_a_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the edge counts while the handler reads
        yield b'{"title": "'
        for _ in range(MAX_BODY_BYTES // 512 + 1):
            yield b"x" * 512
        yield b'"}'

    response = await client.post("/notes", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert problem(response, 413)["title"] == "Content Too Large"


async def test_a_declared_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    response = await post(client, "/notes", '{"title": "' + "x" * MAX_BODY_BYTES + '"}')
    problem(response, 413)


# --- Body: 422 ----------------------------------------------------------------------------------------------------


async def test_every_invalid_member_is_listed_with_its_pointer(client: httpx.AsyncClient) -> None:
    note = {
        "title": "x" * 21,
        "priority": 9,
        "status": "archived",
        "code": "abc",
        "dueAt": "yesterday",
        "tags": [{"name": ""}, {"name": "ok", "colour": "red"}, {}],
        "attributes": {"ok": 1, "negative": -1, "text": "1"},
        "pair": [1, 2],
        "extra": True,
    }
    assert field_errors(await post(client, "/notes", json.dumps(note))) == [
        ("#/title", "Expected a string of at most 20 characters"),
        ("#/priority", "Expected an integer less than or equal to 5"),
        ("#/status", 'Expected one of: "draft", "published"'),
        ("#/code", "Expected a string matching the regular expression '^[A-Z]{3}$'"),
        ("#/dueAt", "Expected an RFC 3339 date-time"),
        ("#/tags", "Expected an array of at most 2 items"),
        ("#/tags/0/name", "Expected a string of at least 1 character"),
        ("#/tags/1/colour", "Unknown field"),
        ("#/tags/2/name", "Required field is missing"),
        ("#/attributes/negative", "Expected an integer greater than or equal to 0"),
        ("#/attributes/text", "Expected an integer, got a string"),
        ("#/pair/1", "Expected a string, got an integer"),
        ("#/extra", "Unknown field"),
    ]


@pytest.mark.parametrize(
    ("note", "errors"),
    [
        ({}, [("#/title", "Required field is missing")]),
        ({"title": None}, [("#/title", "Expected a string, got null")]),
        ({"title": "ok", "pair": [1]}, [("#/pair", "Expected an array of 2 items")]),
        ({"title": "ok", "tags": {"name": "x"}}, [("#/tags", "Expected an array, got an object")]),
        ({"title": "ok", "tags": ["x"]}, [("#/tags/0", "Expected an object, got a string")]),
        # Wire names: the renamed field is `dueAt`; its Python name is an unknown member.
        ({"title": "ok", "due_at": "2030-01-01T00:00:00Z"}, [("#/due_at", "Unknown field")]),
        ({"title": "ok", "dueAt": "2030-01-01"}, [("#/dueAt", "Expected an RFC 3339 date-time")]),
        # RFC 6901 escaping (~0, ~1) and the URI fragment form (percent-encoding) of names the client chose.
        (
            {"title": "ok", "attributes": {"a/b~c": -1}},
            [("#/attributes/a~1b~0c", "Expected an integer greater than or equal to 0")],
        ),
        ({"title": "ok", "two words": 1, "é": 2}, [("#/two%20words", "Unknown field"), ("#/%C3%A9", "Unknown field")]),
    ],
    ids=[
        "missing",
        "null",
        "tuple-length",
        "array-expected",
        "object-expected",
        "python-name",
        "wire-name",
        "escaped",
        "encoded",
    ],
)
async def test_invalid_members_are_pointed_at(
    client: httpx.AsyncClient, note: dict[str, Any], errors: list[tuple[str, str]]
) -> None:
    assert field_errors(await post(client, "/notes", json.dumps(note))) == errors


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"[]", "Expected an object, got an array"),
        (b'"note"', "Expected an object, got a string"),
        (b"null", "Expected an object, got null"),
        (b"42", "Expected an object, got an integer"),
    ],
)
async def test_a_body_that_is_not_an_object_is_one_error_at_the_root(
    client: httpx.AsyncClient, content: bytes, detail: str
) -> None:
    assert field_errors(await post(client, "/notes", content)) == [("#", detail)]


async def test_enums_sets_tags_new_types_and_array_like_structs_are_checked_too(client: httpx.AsyncClient) -> None:
    valid = {"colour": "red", "labels": ["a"], "inner": {"type": "inner", "n": 1}, "owner": 7, "points": [[1, 2]]}
    assert (await post(client, "/extras", json.dumps(valid))).json() == valid
    invalid = {
        "colour": "green",
        "labels": ["a", "b", 3],
        "inner": {"type": "outer", "n": -1},
        "owner": "7",
        "points": [[1], {}],
    }
    assert field_errors(await post(client, "/extras", json.dumps(invalid))) == [
        ("#/colour", 'Expected one of: "red", "blue"'),
        ("#/labels", "Expected an array of at most 2 items"),
        ("#/labels/2", "Expected a string, got an integer"),
        ("#/inner/n", "Expected an integer greater than or equal to 0"),
        ("#/inner/type", 'Expected one of: "inner"'),
        ("#/owner", "Expected an integer, got a string"),
        ("#/points/0", "Expected an array of at least 2 items"),
        ("#/points/1", "Expected an array, got an object"),
    ]


async def test_a_list_body_points_at_its_items(client: httpx.AsyncClient) -> None:
    response = await post(client, "/tags", '[{"name": "ok"}, {"name": ""}, 3]')
    assert field_errors(response) == [
        ("#/1/name", "Expected a string of at least 1 character"),
        ("#/2", "Expected an object, got an integer"),
    ]
    assert (await post(client, "/tags", '[{"name": "ok"}]')).json() == [{"name": "ok"}]


async def test_the_error_list_and_client_chosen_names_are_bounded(client: httpx.AsyncClient) -> None:
    response = await post(client, "/tags", json.dumps([{"name": ""}] * (MAX_ERRORS * 3)))
    assert len(field_errors(response)) == MAX_ERRORS
    long_name = "n" * 2_000
    ((pointer, detail),) = field_errors(await post(client, "/notes", json.dumps({"title": "ok", long_name: 1})))
    assert (pointer, detail) == ("#/" + "n" * MAX_NAME, "Unknown field")
    assert all(len(error["detail"]) <= MAX_DETAIL for error in response.json()["errors"])


async def test_a_post_init_failure_is_reported_without_its_message(client: httpx.AsyncClient) -> None:
    assert (await post(client, "/periods", '{"start": 1, "end": 2}')).json() == {"start": 1, "end": 2}
    response = await post(client, "/periods", '{"start": 1234567, "end": 1}')
    assert field_errors(response) == [("#", "Invalid value")]
    assert "1234567" not in response.text


# --- Query and path parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "page"),
    [
        ("", {"limit": 20, "offset": 0, "tag": [], "active": None}),
        ("limit=5&offset=10", {"limit": 5, "offset": 10, "tag": [], "active": None}),
        ("tag=a&tag=b&tag=a", {"limit": 20, "offset": 0, "tag": ["a", "b", "a"], "active": None}),
        ("active=true&tag=x", {"limit": 20, "offset": 0, "tag": ["x"], "active": True}),
        ("active=0&unknown=1&unknown=2", {"limit": 20, "offset": 0, "tag": [], "active": False}),
    ],
    ids=["defaults", "converted", "repeated", "bool", "unknown-ignored"],
)
async def test_query_parameters_are_converted_from_text(
    client: httpx.AsyncClient, query: str, page: dict[str, Any]
) -> None:
    response = await client.get(f"/page?{query}")
    assert response.status_code == 200, response.text
    assert response.json() == page


@pytest.mark.parametrize(
    ("url", "errors"),
    [
        ("/page?limit=0", [("limit", "Expected an integer greater than or equal to 1")]),
        (
            "/page?limit=500&offset=-1",
            [
                ("limit", "Expected an integer less than or equal to 100"),
                ("offset", "Expected an integer greater than or equal to 0"),
            ],
        ),
        ("/page?limit=ten&active=maybe", [("limit", "Expected an integer"), ("active", "Expected a boolean or null")]),
        ("/page?limit=1&limit=2", [("limit", "Expected one value, got 2")]),
        ("/filter", [("q", "Required parameter is missing")]),
        (
            "/filter?q=a&q=b&sortBy=size&ids=1&ids=x",
            [
                ("q", "Expected one value, got 2"),
                ("sortBy", 'Expected one of: "created", "title"'),
                ("ids", "Expected an integer"),
            ],
        ),
        ("/filter?q=a&ids=1&ids=2&ids=3&ids=4", [("ids", "Expected an array of at most 3 items")]),
        ("/filter?q=a&sort_by=title&extra=1", [("sort_by", "Unknown parameter"), ("extra", "Unknown parameter")]),
    ],
    ids=["below", "above", "not-convertible", "repeated-scalar", "missing", "several", "too-many", "unknown-forbidden"],
)
async def test_each_invalid_query_parameter_is_named(
    client: httpx.AsyncClient, url: str, errors: list[tuple[str, str]]
) -> None:
    response = await client.get(url)
    assert field_errors(response) == errors
    assert all("pointer" not in error for error in response.json()["errors"])


async def test_wire_names_name_query_parameters(client: httpx.AsyncClient) -> None:
    response = await client.get("/filter?q=a&sortBy=title&ids=3&ids=1")
    assert response.json() == {"q": "a", "sortBy": "title", "ids": [3, 1]}


@pytest.mark.parametrize(
    ("url", "status", "body"),
    [
        ("/items/7/abc", 200, {"item_id": 7, "slug": "abc"}),
        (
            "/items/0/abcdefghi",
            422,
            [
                ("item_id", "Expected an integer greater than or equal to 1"),
                ("slug", "Expected a string of at most 8 characters"),
            ],
        ),
        ("/things/00000000-0000-7000-8000-000000000000", 200, {"thing_id": "00000000-0000-7000-8000-000000000000"}),
        ("/things/not-a-uuid", 422, [("thing_id", "Expected a UUID")]),
    ],
)
async def test_path_parameters_decode_or_are_named(client: httpx.AsyncClient, url: str, status: int, body: Any) -> None:
    response = await client.get(url)
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.json() == body
    else:
        assert field_errors(response) == body


async def test_a_path_struct_wanting_a_parameter_the_route_lacks_is_a_server_error(client: httpx.AsyncClient) -> None:
    assert problem(await client.get("/broken/x"), 500)["title"] == "Internal Server Error"


# --- Never the client's values ------------------------------------------------------------------------------------


def _note(**members: Any) -> str:
    return json.dumps({"title": "ok", **members})


@pytest.mark.parametrize(
    ("method", "url", "content"),
    [
        ("POST", "/notes", _note(status=MARKER)),
        ("POST", "/notes", json.dumps({"title": MARKER * 3})),
        ("POST", "/notes", _note(priority=MARKER)),
        ("POST", "/notes", _note(code=MARKER)),
        ("POST", "/notes", _note(dueAt=MARKER)),
        ("POST", "/notes", _note(attributes={"k": MARKER})),
        ("POST", "/notes", _note(pair=[1, MARKER, 3])),
        ("POST", "/notes", _note(extra=MARKER)),
        ("POST", "/periods", json.dumps({"start": 5, "end": 1, "note": MARKER})),
        ("GET", f"/page?limit={MARKER}&active={MARKER}", None),
        ("GET", f"/filter?q=a&sortBy={MARKER}&ids={MARKER}", None),
        ("GET", f"/items/1/{MARKER}", None),
        ("GET", f"/things/{MARKER}", None),
    ],
    ids=[
        "literal",
        "too-long",
        "wrong-type",
        "pattern",
        "datetime",
        "dict-value",
        "tuple-item",
        "unknown-member-value",
        "post-init",
        "query",
        "query-literal",
        "path-string",
        "path-uuid",
    ],
)
async def test_errors_never_repeat_the_clients_values(
    client: httpx.AsyncClient, method: str, url: str, content: str | None
) -> None:
    headers = {"Content-Type": "application/json"} if content is not None else {}
    response = await client.request(method, url, content=content, headers=headers)
    assert field_errors(response)
    body = response.json()
    del body["instance"]  # the request's path, as every problem has it: it holds the path parameters themselves
    assert MARKER not in json.dumps(body)


# --- The public surface -------------------------------------------------------------------------------------------

SURFACE = """
import json, sys
import svc
loaded = sorted(m for m in sys.modules if m.startswith(("svc.", "starlette")))
from svc import *
heavy = [m for m in ("sqlalchemy", "asyncpg", "alembic") if m in sys.modules]
print(json.dumps({"loaded": loaded, "heavy": heavy}))
"""


def test_svc_exports_its_surface_and_imports_it_only_when_used() -> None:
    env = scrubbed_environ()
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", SURFACE], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    modules = json.loads(result.stdout)
    assert modules == {"loaded": [], "heavy": []}
    assert set(svc.__all__) == {
        "Route",
        "json_response",
        "Encoded",
        "decode_body",
        "decode_query",
        "decode_path",
        "ServiceError",
        "BadRequest",
        "NotFound",
        "Conflict",
        "UnsupportedMediaType",
        "UnprocessableContent",
        "FieldError",
        "ServiceUnavailable",
        "Service",
        "database",
        "html_response",
    }
    assert all(getattr(svc, name) is not None for name in svc.__all__)
    with pytest.raises(AttributeError):
        _ = svc.nothing_here
