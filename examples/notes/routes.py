"""The /notes handlers: decode, query, answer. Errors are raised; svc renders them as problems."""

from __future__ import annotations

import msgspec
from sqlalchemy import delete
from starlette.requests import Request
from starlette.responses import Response

from examples.notes.models import Note as NoteRow
from examples.notes.schemas import Note, NoteId, NoteIn, NotePage, NotePatch, Page
from svc import NotFound, Route, database, decode_body, decode_path, decode_query, json_response

# The fast path's statements: plain SQL with $n parameters (asyncpg prepares each once per connection).
GET_NOTE = "SELECT id, title, body, created_at FROM notes WHERE id = $1"
LIST_NOTES = "SELECT id, title, body, created_at FROM notes ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"


def _note(row: NoteRow) -> Note:
    return Note(id=row.id, title=row.title, body=row.body, created_at=row.created_at)


async def create_note(request: Request) -> Response:
    new = await decode_body(request, NoteIn)
    async with database(request).session() as session:
        row = NoteRow(title=new.title, body=new.body)
        session.add(row)
        await session.flush()
        await session.refresh(row)
    headers = [(b"location", request.url_for("get_note", id=row.id).path.encode())]
    return json_response(_note(row), 201, headers)


async def get_note(request: Request) -> Response:
    key = decode_path(request, NoteId)
    # A hot read on the fast path: one statement, one round trip.
    async with database(request).connection() as conn:
        row = await conn.fetchrow(GET_NOTE, key.id)
    if row is None:
        raise NotFound("No note has this id.")
    return json_response(Note(**row))


async def list_notes(request: Request) -> Response:
    page = decode_query(request, Page)
    async with database(request).connection() as conn:
        rows = await conn.fetch(LIST_NOTES, page.limit, page.offset)
    return json_response(NotePage(items=[Note(**row) for row in rows], limit=page.limit, offset=page.offset))


async def update_note(request: Request) -> Response:
    key = decode_path(request, NoteId)
    changes = await decode_body(request, NotePatch)
    async with database(request).session() as session:
        row = await session.get(NoteRow, key.id, with_for_update=True)
        if row is None:
            raise NotFound("No note has this id.")
        for field in NotePatch.__struct_fields__:
            if (value := getattr(changes, field)) is not msgspec.UNSET:
                setattr(row, field, value)
    return json_response(_note(row))


async def delete_note(request: Request) -> Response:
    key = decode_path(request, NoteId)
    async with database(request).session() as session:
        deleted = await session.execute(delete(NoteRow).where(NoteRow.id == key.id).returning(NoteRow.id))
        if deleted.first() is None:
            raise NotFound("No note has this id.")
    return Response(status_code=204)


ROUTES = [
    Route("/notes", create_note, methods=["POST"], body=NoteIn, responses={201: Note}, tags=["notes"]),
    Route("/notes", list_notes, query=Page, responses={200: NotePage}, tags=["notes"]),
    Route("/notes/{id:uuid}", get_note, responses={200: Note, 404: None}, tags=["notes"]),
    Route(
        "/notes/{id:uuid}",
        update_note,
        methods=["PATCH"],
        body=NotePatch,
        responses={200: Note, 404: None},
        tags=["notes"],
    ),
    Route("/notes/{id:uuid}", delete_note, methods=["DELETE"], responses={204: None, 404: None}, tags=["notes"]),
]
