"""Make sure the database a research command writes to has its tables.

On the embedded default (SQLite under ``$ROBUSTAL_DATA_DIR``) a fresh data folder is migrated on
the spot; any other database is left alone and the command says in one line what to run.
"""
from __future__ import annotations

from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def ensure_migrated(stdout=None) -> None:
    executor = MigrationExecutor(connection)
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if not pending:
        return
    if connection.vendor != "sqlite":
        raise CommandError(f"the database has {len(pending)} unapplied migration(s); "
                           "run `python manage.py migrate` first")
    if stdout is not None:
        stdout.write(f"migrating the embedded database {connection.settings_dict['NAME']} "
                     f"({len(pending)} migrations) ...")
    call_command("migrate", verbosity=0)
