"""The embedded default (SQLite) under many concurrent writers: every answer is stored, none
fails with "database is locked" (WAL + IMMEDIATE transactions + busy timeout, config/settings.py)."""
from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from labeling import answering, workflow
from labeling.models import Annotation, Assignment
from tests.web.labeling_support import digits_project, labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def test_sqlite_runs_in_wal_with_immediate_transactions(db):
    if connection.vendor != "sqlite":
        pytest.skip("the embedded default only")
    with connection.cursor() as cur:
        cur.execute("PRAGMA journal_mode")
        assert cur.fetchone()[0].lower() == "wal"
    assert connection.settings_dict["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def test_many_concurrent_writers_lose_nothing(labeling_dirs, monkeypatch):
    from tests.web.factories import AnnotatorFactory

    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)
    people = [AnnotatorFactory(username=f"w{i}") for i in range(8)]
    from labeling import services
    for u in people:
        services.add_annotator(u)
    project = digits_project(n=130, config={"secured_size": 0, "initial_size": 112, "batch_size": 10})
    errors, done = [], []
    mine = Assignment.objects.filter(batch__project=project, status="queued").count()
    assert mine >= 50  # one shared queue: the eight claim and answer until it is empty

    def work(user):
        try:
            while (asg := answering.next_assignment(user=user, project=project)) is not None:
                answering.submit_annotation(user=user, assignment_id=asg.pk, label=asg.item.ground_truth)
                done.append(asg.pk)
        except Exception as exc:  # reported below
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(u,)) for u in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(done) == len(set(done)) == mine == Annotation.objects.filter(assignment__batch__project=project).count()
