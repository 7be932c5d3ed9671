"""API fuzzing (short run): schemathesis against our own OpenAPI schema, as an annotator and as staff.

Valid and schema-violating requests go to the WSGI application in-process; no answer may be a
5xx, and every 4xx must carry a ``detail`` message. The long run (>= 1,000 cases, a table) is
``bench/fuzz_api.py``; the regression tests below pin the bugs it found.
"""
from __future__ import annotations

import json

import pytest
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client

from bench.fuzz_api import FuzzResult, fuzz, make_world, problem_with
from tests.web.labeling_support import labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(labeling_dirs, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return make_world()


@pytest.fixture
def wsgi_app():
    """The WSGI app, in-process, without closing the test's database connection after each request
    (what Django's test client does too: the test's transaction must survive)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield get_wsgi_application()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_short_fuzz_run_has_no_server_error_and_every_4xx_says_why(world, wsgi_app):
    result = fuzz(wsgi_app, world["headers"], examples=3, negative=True, seed=1, real_ids=world["real_ids"])
    operations = {op for _, op in result.per_operation}
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    declared = {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item
                if method in ("get", "post", "put", "patch", "delete")}
    # every operation of the schema was exercised (schemathesis leaves out the schema's own URL)
    assert operations == declared - {"GET /api/schema/"}, declared ^ operations
    assert "POST /api/labeling/projects/{project_id}/images/" in operations  # the staff API too
    assert {r for r, _ in result.statuses} == {"annotator", "staff"}
    assert result.cases >= 8 * 2 * 2
    assert any(s < 300 for _, s in result.statuses), "no request succeeded: the fuzzer is not authenticated"
    assert not result.failures, "\n".join(f"{f['role']} {f['operation']} -> {f['status']} {f['problem']}: "
                                          f"{f['request']} => {f['body'][:200]}" for f in result.failures)


def test_problem_detector_flags_what_it_must():
    class R:
        def __init__(self, status, content):
            self.status_code, self.content = status, content

    assert problem_with(R(500, b'{"detail": "x"}')) == "server error"
    assert problem_with(R(404, b"<h1>Not Found</h1>")) == "4xx without a JSON body"
    assert problem_with(R(400, b'{"non_field_errors": ["bad"]}')) == "4xx without a 'detail' message"
    assert problem_with(R(400, b'{"detail": "label: must be an integer"}')) is None
    assert problem_with(R(201, b"")) is None
    assert FuzzResult().cases == 0


# ---- regressions found by the fuzzer --------------------------------------------------------


def test_token_endpoint_bad_credentials_say_why_in_detail(world):
    r = Client().post("/api/token/", {"username": "nobody", "password": "wrong"})
    assert r.status_code == 400
    body = r.json()
    assert body["detail"] == "Unable to log in with provided credentials." and "non_field_errors" in body["errors"]
    r = Client().post("/api/token/", {}, content_type="application/json")
    assert r.status_code == 400 and "username: This field is required." in r.json()["detail"]


@pytest.mark.parametrize("path", ["/api/labeling/projects/1.5e-3/status/", "/api/labeling/assignments/x/skip/",
                                  "/api/nothing-here/"])
def test_api_paths_that_match_no_route_answer_json_404(path, world):
    r = Client().get(path)
    assert r.status_code == 404 and r["Content-Type"] == "application/json"
    assert json.loads(r.content)["detail"].startswith("Not found")


@pytest.mark.parametrize("label", [40000, 2**31, 2**62])
def test_a_label_beyond_smallint_is_refused_with_a_reason(world, label):
    """PostgreSQL's one-statement answer bound such a label as an integer wider than the column: 500."""
    from labeling.models import Assignment

    asg = Assignment.objects.filter(labeler__username="fuzz_ann_a", status=Assignment.Status.OPEN).first()
    r = Client().post(f"/api/labeling/assignments/{asg.pk}/annotation/", {"label": label},
                      content_type="application/json",
                      HTTP_AUTHORIZATION=world["headers"]["annotator"]["Authorization"])
    assert r.status_code == 400 and "label" in r.json()["detail"], r.content


def test_pages_keep_the_html_404(world):
    r = Client().get("/labeling/nothing-here/")
    assert r.status_code == 404 and r["Content-Type"].startswith("text/html")
