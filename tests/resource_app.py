"""A sample resource declared the svc way, for the OpenAPI tests and `uvicorn --factory tests.resource_app:create_resource_app`.

Items live in memory, one store per app: POST /items, GET /items?limit=&offset=, GET and DELETE
/items/{item_id}, GET /search?name=, and GET /tags/{tag_id} (a UUID path parameter). Every limit
is declared once, on the Structs; the document and the decoding both take it from there.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Annotated, Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from svc.app import App, create_app
from svc.errors import BadRequest, FieldError, NotFound, UnprocessableContent, UnsupportedMediaType
from svc.http.responses import json_response
from svc.http.routing import Route

__all__ = ["Item", "ItemIn", "Page", "Search", "create_resource_app", "routes"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=40, description="What the item is called.")]


class ItemIn(msgspec.Struct, forbid_unknown_fields=True):
    """A new item."""

    name: Name
    count: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    labels: Annotated[list[Annotated[str, msgspec.Meta(max_length=10)]], msgspec.Meta(max_length=5)] = []


class Item(msgspec.Struct):
    """An item."""

    id: int
    name: str
    count: int
    labels: list[str]


class Page(msgspec.Struct):
    """Which items to list."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


class Search(msgspec.Struct):
    """What to look for."""

    name: Name


class ItemPath(msgspec.Struct):
    item_id: int


class TagPath(msgspec.Struct):
    tag_id: uuid.UUID


# --- Local stand-in for svc.http.decode (being written on another branch): at merge, delete this block and
# --- import `decode_body`, `decode_query` and `decode_path` from `svc.http.decode` instead.
T = TypeVar("T")


async def decode_body(request: Request, type_: type[T]) -> T:
    """The JSON body as `type_`: 415 for another media type, 400 for malformed JSON, 422 for invalid values."""
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType()
    try:
        value = msgspec.json.decode(await request.body())
    except msgspec.DecodeError:
        raise BadRequest("The request body is not well-formed JSON.") from None
    try:
        # Integral numbers as ints: JSON Schema's integers include 325.0 and 1e3, which msgspec's `int` refuses,
        # and every body the document allows must be accepted (schemathesis checks it).
        return msgspec.convert(_integral(value), type_)
    except msgspec.ValidationError as exc:
        raise UnprocessableContent([FieldError(detail=str(exc), pointer="#")]) from None


def _integral(value: Any) -> Any:
    """`value` (decoded JSON) with every float that has no fractional part made an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _convert(values: dict[str, Any], type_: type[T]) -> T:
    try:
        return msgspec.convert(values, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise UnprocessableContent([FieldError(detail=str(exc))]) from None


def decode_query(request: Request, type_: type[T]) -> T:
    """The query parameters as `type_` (422 for invalid values; a repeated parameter is invalid)."""
    query = request.query_params
    repeated = sorted({key for key in query if len(query.getlist(key)) > 1})
    if repeated:
        raise UnprocessableContent([FieldError(detail="Given more than once.", parameter=key) for key in repeated])
    return _convert(dict(query), type_)


def decode_path(request: Request, type_: type[T]) -> T:
    """The path parameters as `type_` (422 for invalid values)."""
    return _convert(request.path_params, type_)


# --- End of the stand-in.


class Items:
    """The in-memory store and its handlers."""

    def __init__(self) -> None:
        self.items: dict[int, Item] = {}
        self.ids = itertools.count(1)

    async def create_item(self, request: Request) -> Response:
        new = await decode_body(request, ItemIn)
        item = Item(next(self.ids), new.name, new.count, new.labels)
        self.items[item.id] = item
        return json_response(item, 201, [(b"location", f"/items/{item.id}".encode())])

    async def list_items(self, request: Request) -> Response:
        page = decode_query(request, Page)
        return json_response(list(self.items.values())[page.offset : page.offset + page.limit])

    async def get_item(self, request: Request) -> Response:
        return json_response(self._find(decode_path(request, ItemPath).item_id))

    async def delete_item(self, request: Request) -> Response:
        del self.items[self._find(decode_path(request, ItemPath).item_id).id]
        return Response(status_code=204)

    async def search(self, request: Request) -> Response:
        name = decode_query(request, Search).name
        return json_response([item for item in self.items.values() if name in item.name])

    async def get_tag(self, request: Request) -> Response:
        tag_id = decode_path(request, TagPath).tag_id
        if tag_id.int % 2:
            raise NotFound("No tag has this id.")
        return Response(status_code=204)

    def _find(self, item_id: int) -> Item:
        if (item := self.items.get(item_id)) is None:
            raise NotFound("No item has this id.")
        return item


def routes() -> list[Route]:
    """The resource's routes, on a store of their own."""
    items = Items()
    return [
        Route("/items", items.create_item, methods=["POST"], body=ItemIn, responses={201: Item}, tags=["items"]),
        Route(
            "/items",
            items.list_items,
            query=Page,
            responses={200: list[Item]},
            summary="List items",
            description="Oldest first.",
            tags=["items"],
        ),
        Route("/items/{item_id:int}", items.get_item, responses={200: Item, 404: None}, tags=["items"]),
        Route("/items/{item_id:int}", items.delete_item, methods=["DELETE"], responses={204: None, 404: None}),
        Route("/search", items.search, query=Search, responses={200: list[Item]}),
        Route("/tags/{tag_id:uuid}", items.get_tag, responses={204: None, 404: None}),
    ]


def create_resource_app() -> App:
    """The service, configured from the environment, with the resource's routes."""
    return create_app(routes=routes())
