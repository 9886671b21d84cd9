"""/notes as a client sees it: each test on a database of its own (the kit rolls every test back)."""

from __future__ import annotations

import uuid

import httpx
import pytest

NOTE = {"title": "Groceries", "body": "Milk, eggs."}


async def create(client: httpx.AsyncClient, **fields: str) -> dict[str, object]:
    response = await client.post("/notes", json={**NOTE, **fields})
    assert response.status_code == 201, response.text
    note: dict[str, object] = response.json()
    return note


async def test_a_created_note_is_201_with_its_location_and_can_be_read_back(svc_client: httpx.AsyncClient) -> None:
    response = await svc_client.post("/notes", json=NOTE)
    assert response.status_code == 201
    note = response.json()
    assert response.headers["location"] == f"/notes/{note['id']}"
    assert uuid.UUID(note["id"]).version == 7
    assert (note["title"], note["body"]) == (NOTE["title"], NOTE["body"])
    fetched = await svc_client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == note


async def test_a_missing_note_is_a_404_problem(svc_client: httpx.AsyncClient) -> None:
    response = await svc_client.get(f"/notes/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "No note has this id."


async def test_the_list_is_newest_first_and_paged(svc_client: httpx.AsyncClient) -> None:
    titles = [f"note {n}" for n in range(5)]
    for title in titles:
        await create(svc_client, title=title)
    first = (await svc_client.get("/notes", params={"limit": 2})).json()
    rest = (await svc_client.get("/notes", params={"limit": 10, "offset": 2})).json()
    assert [n["title"] for n in first["items"]] == titles[::-1][:2]
    assert [n["title"] for n in rest["items"]] == titles[::-1][2:]
    assert (first["limit"], first["offset"]) == (2, 0)


async def test_each_test_starts_with_no_notes(svc_client: httpx.AsyncClient) -> None:
    # The test above made five: rolled back with it.
    assert (await svc_client.get("/notes")).json()["items"] == []


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "101"}, {"offset": "-1"}, {"limit": "many"}])
async def test_a_page_outside_its_bounds_is_a_422_naming_the_parameter(
    svc_client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await svc_client.get("/notes", params=params)
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["parameter"] == next(iter(params))


async def test_an_invalid_note_is_a_422_listing_every_invalid_field(svc_client: httpx.AsyncClient) -> None:
    response = await svc_client.post("/notes", json={"title": "", "body": 7, "colour": "red"})
    assert response.status_code == 422
    assert response.json()["title"] == "Unprocessable Content"
    pointers = sorted(error["pointer"] for error in response.json()["errors"])
    assert pointers == ["#/body", "#/colour", "#/title"]


async def test_a_patch_replaces_only_the_fields_it_gives(svc_client: httpx.AsyncClient) -> None:
    note = await create(svc_client)
    response = await svc_client.patch(f"/notes/{note['id']}", json={"title": "Shopping"})
    assert response.status_code == 200
    assert response.json() == {**note, "title": "Shopping"}


async def test_a_deleted_note_is_gone(svc_client: httpx.AsyncClient) -> None:
    note = await create(svc_client)
    assert (await svc_client.delete(f"/notes/{note['id']}")).status_code == 204
    assert (await svc_client.get(f"/notes/{note['id']}")).status_code == 404
    assert (await svc_client.delete(f"/notes/{note['id']}")).status_code == 404


async def test_a_body_that_is_not_json_is_a_415(svc_client: httpx.AsyncClient) -> None:
    response = await svc_client.post("/notes", content=b"title=x", headers={"content-type": "text/plain"})
    assert response.status_code == 415
