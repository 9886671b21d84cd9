"""A sample resource declared the svc way, for the OpenAPI tests and `uvicorn --factory tests.resource_app:create_resource_app`.

Items live in memory, one store per app: POST /items, GET /items?limit=&offset=, GET and DELETE
/items/{item_id}, GET /search?name=, and GET /tags/{tag_id} (a UUID path parameter). Every limit
is declared once, on the Structs; the document and the decoding both take it from there.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from svc.app import App, create_app
from svc.errors import NotFound
from svc.http.decode import decode_body, decode_path, decode_query
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
