"""`python -m bench.techempower setup | verify`: see the package's docstring and bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.techempower.common import SCHEMA, asyncpg_dsn, held_database
from bench.techempower.servers import APPS, App, running, server
from bench.techempower.setup import create_tables
from bench.techempower.verify import verify


async def tables_exist(url: str) -> bool:
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        found: bool = await connection.fetchval(
            "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL", f"{SCHEMA}.world", f"{SCHEMA}.fortune"
        )
        return found
    finally:
        await connection.close()


def verify_apps(apps: Sequence[App], url: str) -> dict[str, list[str]]:
    """Each app started under uvicorn on `url` and verified, one at a time; its failures by title."""
    results: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="techempower-") as work:
        for app in apps:
            s = server(app, url, Path(work))
            try:
                with running([s]):
                    results[app.title] = asyncio.run(verify(s.url(""), url))
            except (RuntimeError, TimeoutError) as exc:  # it never answered /db with a 200
                results[app.title] = [f"did not start: {str(exc)[-2000:]}"]
    return results


def report(results: dict[str, list[str]]) -> str:
    lines = []
    for title, failures in results.items():
        lines.append(f"{title}: {'pass' if not failures else f'FAIL ({len(failures)})'}")
        lines += [f"  - {failure}" for failure in failures]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.techempower", description=__doc__)
    parser.add_argument("command", choices=("setup", "verify"))
    parser.add_argument("--database-url", help="the benchmark database (default: DATABASE_URL, else embedded)")
    parser.add_argument("--only", action="append", choices=[app.name for app in APPS], help="verify: these apps")
    args = parser.parse_args(argv)

    with held_database(args.database_url) as url:
        if args.command == "setup":
            asyncio.run(create_tables(url))
            print(f"{SCHEMA}.world (10,000 rows) and {SCHEMA}.fortune (12 rows) created.")
            return 0
        if not asyncio.run(tables_exist(url)):
            print(f"No {SCHEMA} tables: run `python -m bench.techempower setup` first.", file=sys.stderr)
            return 1
        results = verify_apps([app for app in APPS if not args.only or app.name in args.only], url)
    print(report(results))
    return 0 if not any(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
