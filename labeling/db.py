"""Prepared statements for the annotators' hot path on PostgreSQL.

Django turns psycopg's automatic statement preparation off (``prepare_threshold=None``) so that
transaction-mode connection poolers keep working, and binds parameters on the client. The two
statements every answer runs (token lookup, the one-statement answer) are long and PostgreSQL
spent more time planning them than running them; :func:`prepared_cursor` gives a cursor that
binds on the server and asks PostgreSQL to keep the plan for the connection's lifetime. The
cursor is wrapped by Django as usual (errors translated, queries logged when debugging).

Set ``DB_PREPARED_STATEMENTS=0`` behind a transaction-mode pooler (PgBouncer < 1.21), which does
not keep prepared statements across transactions.

:func:`instances` turns the rows of those hand-written SELECTs into model instances (on any
database) as ``Model.objects.raw`` would, at a fraction of its CPU.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager

from django.db import connection, connections

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


def instances(model, cursor) -> list:
    """Model instances from the rows of a ``SELECT t.*, extra ...`` just run on ``cursor``.

    What ``Model.objects.raw`` gives (each field through Django's converters: SQLite's datetimes,
    booleans and JSON arrive as text or integers; columns that are no field of the model become
    attributes, unconverted), without its per-query cost: a raw queryset looks up the columns'
    converters again on every query (a third of an SQLite ``next`` + answer outside the
    database). Here they are looked up once per statement shape and thread's connection.
    """
    loader = _loader(model, tuple(col[0] for col in cursor.description))
    return [loader(row) for row in cursor.fetchall()]


def _loader(model, names: tuple):
    conn = connections[connection.alias]  # this thread's connection: converters are bound to it
    cache = conn.__dict__.setdefault("_labeling_row_loaders", {})
    loader = cache.get((model, names))
    if loader is None:
        loader = cache[(model, names)] = _make_loader(conn, model, names)
    return loader


def _make_loader(conn, model, names: tuple):
    fields = model._meta.concrete_fields
    at = {name: i for i, name in enumerate(names)}
    positions = [at[f.column] for f in fields]  # every field's column must be there (``t.*``)
    attnames = [f.attname for f in fields]
    converted = []
    for k, f in enumerate(fields):
        col = f.get_col(model._meta.db_table)
        funcs = conn.ops.get_db_converters(col) + col.get_db_converters(conn)
        if funcs:
            converted.append((k, funcs, col))
    columns = {f.column for f in fields}
    extra = [(i, name) for i, name in enumerate(names) if name not in columns]
    alias, from_db = conn.alias, model.from_db

    def load(row):
        values = [row[i] for i in positions]
        for k, funcs, col in converted:
            value = values[k]
            for func in funcs:
                value = func(value, col, conn)
            values[k] = value
        obj = from_db(alias, attnames, values)
        for i, name in extra:
            setattr(obj, name, row[i])
        return obj

    return load
