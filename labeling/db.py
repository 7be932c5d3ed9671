"""Prepared statements for the annotators' hot path on PostgreSQL.

Django turns psycopg's automatic statement preparation off (``prepare_threshold=None``) so that
transaction-mode connection poolers keep working, and binds parameters on the client. The two
statements every answer runs (token lookup, the one-statement answer) are long and PostgreSQL
spent more time planning them than running them; :func:`prepared_cursor` gives a cursor that
binds on the server and asks PostgreSQL to keep the plan for the connection's lifetime. The
cursor is wrapped by Django as usual (errors translated, queries logged when debugging).

Set ``DB_PREPARED_STATEMENTS=0`` behind a transaction-mode pooler (PgBouncer < 1.21), which does
not keep prepared statements across transactions.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager

from django.db import connection

#: psycopg's automatic preparation threshold on our connections: never reached by repetition
_ONLY_WHEN_ASKED = 2**31 - 1

PREPARE = os.environ.get("DB_PREPARED_STATEMENTS", "1").strip().lower() not in ("0", "false", "no", "off")


@contextmanager
def prepared_cursor():
    """A Django cursor whose statements PostgreSQL prepares (a plain cursor on other databases)."""
    if connection.vendor != "postgresql" or not PREPARE:
        with connection.cursor() as cursor:
            yield cursor
        return
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        # Django connects with prepare_threshold=None, and psycopg then ignores prepare=True too
        # (every statement was planned again). A threshold no statement reaches keeps Django's
        # own queries unprepared and prepares exactly the ones run through this cursor.
        raw.prepare_threshold = _ONLY_WHEN_ASKED
    with connection.wrap_database_errors:
        cursor = connection._prepare_cursor(_preparing_cursor_class()(raw))
    with cursor:
        yield cursor


@functools.cache
def _preparing_cursor_class():
    import psycopg

    class PreparingCursor(psycopg.Cursor):
        """Server-side binding, and ``prepare=True`` unless the caller says otherwise."""

        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)

        def _send_query_prepared(self, name, pgq, *, binary=None):
            # psycopg records the query only when it is not prepared; Django's query log
            # (DEBUG, CaptureQueriesContext) reads it from there.
            self._query = pgq
            return super()._send_query_prepared(name, pgq, binary=binary)

    return PreparingCursor


def instance_from_row(model, names, values):
    """A model instance from a ``SELECT t.*`` row (columns by name, in any order)."""
    by_name = dict(zip(names, values))
    fields = model._meta.concrete_fields
    return model.from_db(connection.alias, [f.attname for f in fields], [by_name[f.column] for f in fields])
