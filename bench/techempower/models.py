"""The SQLAlchemy ORM models of World and Fortune (schema `techempower`), for `svc_orm` and `fastapi_orm`."""

from __future__ import annotations

from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench.techempower.common import SCHEMA


class Base(DeclarativeBase):
    pass


class World(Base):
    __tablename__ = "world"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    randomnumber: Mapped[int] = mapped_column(Integer)


class Fortune(Base):
    __tablename__ = "fortune"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message: Mapped[str] = mapped_column(String(2048))
