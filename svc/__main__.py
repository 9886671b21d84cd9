"""`python -m svc`: operational commands."""

from __future__ import annotations

import argparse
import inspect
import logging
import sys

from svc.settings import ConfigError, load_settings

logger = logging.getLogger("svc.migrations")


def check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and print it with secrets masked."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    width = max(len(name) for name in settings.masked())
    for name, value in settings.masked().items():
        print(f"{name:<{width}}  {'' if value is None else value}")
    print("configuration OK", file=sys.stderr)
    return 0


def migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations: upgrade the database to the scripts' head, like `alembic upgrade head`.

    The database is the service's own: DATABASE_URL, or without it in development/test the
    embedded PostgreSQL. Exits 0 when the schema is at head, 1 with a reason otherwise.
    """
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.development_only and not settings.is_development:
        print(f"svc: APP_ENV is {settings.app_env}: migrations are not applied on start.", file=sys.stderr)
        return 0
    from svc.migrations import configure_cli_logging, describe_error, describe_revisions, upgrade

    configure_cli_logging(settings)
    try:
        result = upgrade(settings)
    except Exception as exc:
        logger.debug("Migration failed", exc_info=True)
        print(f"svc: migration failed: {describe_error(exc, settings.db_connect_timeout)}", file=sys.stderr)
        return 1
    after = describe_revisions(result.after)
    if result.before == result.after:
        print(f"svc: database schema already at head ({after})", file=sys.stderr)
    else:
        print(f"svc: database schema upgraded from {describe_revisions(result.before)} to {after}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m svc", description="svc operational commands.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check-config",
        help="validate the configuration and print it with secrets masked",
        description=check_config.__doc__,
    )
    check.set_defaults(run=check_config)
    upgrade = commands.add_parser(
        "migrate",
        help="apply pending database migrations (alembic upgrade head)",
        description=inspect.cleandoc(migrate.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upgrade.add_argument(
        "--development-only",
        action="store_true",
        help="do nothing unless APP_ENV is development (scripts/run uses it: deployed services never migrate on start)",
    )
    upgrade.set_defaults(run=migrate)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
