"""The TechEmpower Framework Benchmarks' five test types (issue 15), built on svc and on its peers.

From the repository root (the benchmark database: DATABASE_URL, else the embedded PostgreSQL 18 in
`.data/postgres`; the tables live in the schema `techempower`, never in svc's):

    uv run python -m bench.techempower setup           # create and fill World and Fortune
    uv run python -m bench.techempower verify          # every app against the rules, over HTTP
    uv run python -m bench.techempower.load            # the load benchmark (wrk), see bench/README.md
    uv run uvicorn bench.techempower.svc_fast:app --no-server-header   # one app (svc sends its own Server)

The apps, one module each, all serving `/json`, `/db`, `/queries`, `/updates` and `/fortunes`:
`svc_fast` (svc, the fast path), `svc_orm` (svc, the ORM path), `raw` (a raw ASGI callable on an
asyncpg pool: the limit), `starlette_asyncpg`, `fastapi_asyncpg`, `fastapi_orm` (FastAPI, the
SQLAlchemy async ORM and pydantic: the stack the seed started from).
"""
