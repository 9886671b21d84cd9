"""What /notes takes and answers: msgspec Structs, their limits declared once (decoding and OpenAPI use them)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Body = Annotated[str, msgspec.Meta(max_length=10_000)]


class NoteIn(msgspec.Struct, forbid_unknown_fields=True):
    """A new note."""

    title: Title
    body: Body = ""


class NotePatch(msgspec.Struct, forbid_unknown_fields=True):
    """Changes to a note: the fields given are replaced."""

    title: Title | msgspec.UnsetType = msgspec.UNSET
    body: Body | msgspec.UnsetType = msgspec.UNSET


class Note(msgspec.Struct):
    """A note as stored."""

    id: uuid.UUID
    title: str
    body: str
    created_at: datetime


class NoteId(msgspec.Struct):
    """The path of one note."""

    id: uuid.UUID


class Page(msgspec.Struct):
    """Which notes of the list: newest first."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


class NotePage(msgspec.Struct):
    """One page of notes."""

    items: list[Note]
    limit: int
    offset: int
