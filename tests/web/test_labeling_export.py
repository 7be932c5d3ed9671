"""Exports: raw (one row per annotation) and resolved (one row per item), CSV and JSON, staff only."""
from __future__ import annotations

import csv
import io
import json

import pytest

from labeling import loop_step, services
from labeling.models import Assignment, QueryBatch
from tests.web.labeling_support import annotators, answer_open, digits_project, labeling_dirs, staff  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(labeling_dirs, annotators):
    project = digits_project(config={"strategy": "random", "defenses": False})
    answer_open(project)
    loop_step.advance_loop(batch_id=QueryBatch.objects.get(project=project, iteration=0).pk)
    return project


def read(client, url):
    r = client.get(url)
    assert r.status_code == 200, r.content
    return r


def test_raw_csv_and_json(project, staff, client):
    client.force_login(staff)
    r = read(client, f"/api/labeling/projects/{project.pk}/export/raw.csv")
    assert r["Content-Type"].startswith("text/csv") and "attachment" in r["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(r.streaming_content).decode())))
    assert len(rows) == 6 and {row["kind"] for row in rows} == {"first_label"}
    assert {row["labeler"] for row in rows} == {"ann_a", "ann_b", "ann_c"}
    assert all(row["label_name"] == project.classes[int(row["label"])] for row in rows)
    data = json.loads(read(client, f"/api/labeling/projects/{project.pk}/export/raw.json").content)
    assert data["project"]["classes"] == ["0", "1", "2"] and len(data["rows"]) == 6


def test_resolved_rows_cover_every_item_with_status(project, staff, client):
    client.force_login(staff)
    data = json.loads(read(client, f"/api/labeling/projects/{project.pk}/export/resolved.json").content)
    rows = data["rows"]
    assert len(rows) == project.items.count()
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    assert len(by_status["labeled"]) == 6 and len(by_status["secured"]) == 6
    for row in by_status["labeled"]:
        assert row["resolved_label"] == row["majority_label"] == row["ground_truth"] and row["agreement"] == 1.0
    for row in by_status["unlabeled"]:
        assert row["resolved_label"] is None and row["n_annotations"] == 0
    text = b"".join(read(client, f"/api/labeling/projects/{project.pk}/export/resolved.csv").streaming_content).decode()
    assert text.splitlines()[0].startswith("item_id,item_index,source,status,resolved_label")


def test_majority_and_agreement(project, annotators):
    from labeling.models import Annotation
    from labeling.selectors import export_resolved_rows

    answer_open(project)
    batch = QueryBatch.objects.get(project=project, iteration=1)
    first = Assignment.objects.filter(batch=batch).first()
    item = first.item
    others = [u for u in annotators if u.pk != first.labeler_id]
    # two more opinions on the item: one agrees, one does not -> majority kept, agreement 2/3
    for user, label in ((others[0], item.ground_truth), (others[1], (item.ground_truth + 1) % 3)):
        asg = Assignment.objects.create(item=item, batch=batch, labeler=user, kind="secured", status="done")
        Annotation.objects.create(assignment=asg, label=label)
    row = next(r for r in export_resolved_rows(project) if r["item_id"] == item.pk)
    assert row["n_annotations"] == 3 and row["majority_label"] == item.ground_truth
    assert row["agreement"] == pytest.approx(2 / 3, abs=1e-3)


def test_bad_export_kind_is_400(project, staff, client):
    client.force_login(staff)
    assert client.get(f"/api/labeling/projects/{project.pk}/export/everything.csv").status_code == 400
    assert client.get(f"/api/labeling/projects/{project.pk}/export/raw.xml").status_code == 400


def test_staff_project_page_draws_the_chart(project, staff, client):
    client.force_login(staff)
    page = client.get(f"/labeling/staff/projects/{project.pk}/").content.decode()
    assert "<svg" in page and "polyline" in page and "labels bought" in page
    assert "export/resolved.csv" in page
