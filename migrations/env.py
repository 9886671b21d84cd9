"""Alembic's environment for svc: the service's settings choose the database, migrations run on asyncpg.

- `alembic ...` on the command line: settings come from the environment (and `.env`), with the
  same normalisation as the app; without DATABASE_URL in development/test, the embedded
  PostgreSQL the app uses is started (or attached to) and let go afterwards.
- From code: `svc.migrations.upgrade_async()` passes its connection in
  `config.attributes["connection"]` and it is used as is (alembic's connection-sharing recipe).
  Commands called synchronously inside a running event loop run on a loop of their own in a
  worker thread, since `asyncio.run()` cannot nest.

Online, the session waits for the migrators' advisory lock, then gets MIGRATION_LOCK_TIMEOUT and
MIGRATION_STATEMENT_TIMEOUT (`svc.migrations.prepare_session`; lock timeouts are retried by
`run_bounded`). Each revision is a transaction of its own: a revision's locks are let go when it
ends, not held until the last one, and `autocommit_block()` (`CREATE INDEX CONCURRENTLY`) works.
Offline (`--sql`), the same `SET`s open the script.
"""

from __future__ import annotations

from alembic import context
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from svc import migrations
from svc.models import Base
from svc.settings import Settings, load_settings_or_exit

config = context.config
# The service's models when it has some (svc.migrations.alembic_config puts them here), else the foundation's.
target_metadata = config.attributes.get("metadata") or Base.metadata


def service_settings() -> Settings:
    settings: Settings | None = config.attributes.get("settings")
    if settings is None:
        settings = load_settings_or_exit()
        # For svc.migrations.lock_timeout_off(), which restores the configured lock_timeout.
        config.attributes["settings"] = settings
    if config.attributes.get("configure_logging", True):
        migrations.configure_cli_logging(settings)
    return settings


def run_migrations_offline() -> None:
    """`--sql`: emit the SQL for PostgreSQL without connecting, each revision in a transaction of its own."""
    settings = service_settings()
    context.configure(
        dialect_name="postgresql",
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=True,
    )
    for statement in migrations.timeout_statements(settings):
        context.execute(statement)
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the command's migrations on `connection`, a session `svc.migrations.prepare_session` has made ready."""
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(settings: Settings) -> None:
    async with migrations.connect(settings) as connection:
        await migrations.prepare_session(connection, settings)
        await migrations.run_bounded(connection, settings, do_run_migrations)


def run_migrations_online() -> None:
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    settings = service_settings()
    try:
        migrations.run_blocking(lambda: run_async_migrations(settings))
    except migrations.LockTimeout as exc:
        # alembic's command line prints a CommandError as "FAILED: <text>", without a traceback.
        raise CommandError(str(exc)) from exc


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
