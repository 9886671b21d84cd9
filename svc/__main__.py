"""`python -m svc`: operational commands."""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from svc.settings import load_settings_or_exit

if TYPE_CHECKING:
    from uvicorn import Config

logger = logging.getLogger("svc.cli")
APP = "svc.app:app"


def check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and print it with secrets masked."""
    masked = load_settings_or_exit().masked()
    width = max(len(name) for name in masked)
    for name, value in masked.items():
        print(f"{name:<{width}}  {'' if value is None else value}")
    print("configuration OK", file=sys.stderr)
    return 0


def migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations: upgrade the database to the scripts' head, like `alembic upgrade head`.

    The database is the service's own: DATABASE_URL, or without it in development/test the
    embedded PostgreSQL. Exits 0 when the schema is at head, 1 with a reason otherwise.
    """
    settings = load_settings_or_exit()
    if args.development_only and not settings.is_development:
        print(f"svc: APP_ENV is {settings.app_env}: migrations are not applied on start.", file=sys.stderr)
        return 0
    from svc.migrations import configure_cli_logging, describe_error, upgrade
    from svc.schema import describe_revisions

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


def lint_migrations(args: argparse.Namespace) -> int:
    """Check every migration's SQL with squawk before it lands.

    Each revision from base to head (svc's and the SERVICE's) is rendered on its own by Alembic's
    offline mode for PostgreSQL (no database is needed) and checked with the rules of .squawk.toml.
    A statement may opt out of one rule with svc.lint.squawk_ignore(rule, why=...) in its revision.
    Exits 0 when every revision passes, 1 naming each revision, rule and statement otherwise.
    """
    settings = load_settings_or_exit()
    from svc.lint import LintError, lint

    try:
        checked, findings = lint(settings, version_locations=args.version_location)
    except LintError as exc:
        print(f"svc: lint-migrations failed: {exc}", file=sys.stderr)
        return 1
    for finding in findings:
        print(finding.render(), file=sys.stderr)
    if findings:
        print(f"svc: {len(findings)} problem(s) in {checked} revision(s)", file=sys.stderr)
        return 1
    print(f"svc: {checked} revision(s) pass squawk", file=sys.stderr)
    return 0


def serve(args: argparse.Namespace) -> int:
    """Serve `svc.app:app` with uvicorn, configured for production.

    The configuration is validated first (exit 1 naming every bad variable, before anything
    listens). uvicorn's access log is off (the service writes its own structured one), so is its
    `server` header; the lifespan is required, so a failed start-up stops the process. Exits 0
    after a graceful shutdown (SIGTERM, Ctrl-C), 1 when the server (or, with --workers, any
    worker) could not start. Every line it writes, uvicorn's supervisor's included, is in LOG_FORMAT.
    SIGHUP drains like SIGTERM; with --workers, uvicorn's supervisor takes it instead and replaces
    the workers one by one (each old one drains as after SIGTERM).
    """
    settings = load_settings_or_exit()
    import uvicorn

    from svc.logging import configure_logging

    # Here too, not only in the app: with --workers or --reload this process is uvicorn's supervisor, which
    # never builds the app, and its lines ("Started parent process", a port in use) must be svc's, JSON in
    # production. uvicorn installs no logging configuration of its own (log_config=None), here or in a worker.
    configure_logging(settings.log_level, settings.log_format)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "reload": args.reload,
        "access_log": False,
        "server_header": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": args.timeout_graceful_shutdown,
        "http": "svc.protocol:HttpProtocol",
        # The client's address and scheme from X-Forwarded-For/-Proto only when the peer is a trusted proxy.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies),
        "log_config": None,
    }
    try:
        if args.workers > 1 and not args.reload:
            started = _supervise_workers(uvicorn.Config(APP, **options))
        else:
            uvicorn.run(APP, **options)
            started = True
    except SystemExit as exc:
        # uvicorn exits 3 when it cannot start (port in use, failed lifespan), after logging why.
        started = exc.code in (0, None)
    if not started:
        logger.error("The server could not start (the reason is logged above)")
        return 1
    return 0


def _supervise_workers(config: Config) -> bool:
    """uvicorn's `--workers` supervisor, as `uvicorn.run` runs it; False when a worker could not start.

    The supervisor stops when a worker exits with uvicorn's start-up failure status, but returns as
    after a graceful shutdown: that worker is still among its processes, with that status.
    """
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    return all(process.exitcode != STARTUP_FAILURE for process in supervisor.processes)


def _int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value

    return parse


class _CommandListFormatter(argparse.HelpFormatter):
    """Lists each command with its summary on one line.

    argparse measures command names one indent short of where it prints them, so the longest
    name would get a line of its own.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            longest = max(map(len, action.choices))
            self._action_max_length = max(self._action_max_length, self._current_indent + 4 + longest)


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error exits 1, like every other failure of a command."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Run the command in `argv` (default: the process's arguments); return its exit status."""
    parser = _Parser(
        prog="python -m svc",
        description="svc operational commands.",
        formatter_class=_CommandListFormatter,
        epilog="Every command exits 0 on success and 1 on failure, with the reason on stderr. "
        "`python -m svc COMMAND --help` describes a command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check-config",
        help="validate and print the configuration, secrets masked",
        description=check_config.__doc__,
    )
    check.set_defaults(run=check_config)
    upgrade = commands.add_parser(
        "migrate",
        help="apply pending migrations (alembic upgrade head)",
        description=inspect.cleandoc(migrate.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upgrade.add_argument(
        "--development-only",
        action="store_true",
        help="do nothing unless APP_ENV is development (scripts/run uses it: deployed services never migrate on start)",
    )
    upgrade.set_defaults(run=migrate)
    linter = commands.add_parser(
        "lint-migrations",
        help="check every migration's SQL with squawk (.squawk.toml)",
        description=inspect.cleandoc(lint_migrations.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    linter.add_argument(
        "--version-location",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="also a directory of revision scripts (repeatable), e.g. drafts not yet in a service",
    )
    linter.set_defaults(run=lint_migrations)
    server = commands.add_parser(
        "serve",
        help="serve the app with uvicorn, configured for production",
        description=inspect.cleandoc(serve.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    server.add_argument(
        "--port", type=_int_between(0, 65_535), default=8000, help="port to listen on (default: %(default)s)"
    )
    server.add_argument(
        "--workers", type=_int_between(1, 1_024), default=1, help="worker processes (default: %(default)s)"
    )
    server.add_argument(
        "--timeout-graceful-shutdown",
        type=_int_between(0, 3_600),
        # 20: with the 5 s SHUTDOWN_DRAIN_SECONDS of staging/production, 5 s inside Kubernetes' default 30 s grace
        # period, which is when the kubelet sends SIGKILL.
        default=20,
        metavar="SECONDS",
        help="longest wait for in-flight requests at shutdown, after the SHUTDOWN_DRAIN_SECONDS delay; keep "
        "SHUTDOWN_DRAIN_SECONDS + this below Kubernetes' terminationGracePeriodSeconds (default: %(default)s)",
    )
    server.add_argument("--reload", action="store_true", help="restart on code changes (development only)")
    server.set_defaults(run=serve)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
