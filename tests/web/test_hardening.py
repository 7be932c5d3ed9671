"""Hardening: deploy checks, login lockout, API throttles, CSRF, request size limits, security headers."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework import throttling
from rest_framework.authtoken.models import Token

from labeling.models import Assignment, Project
from tests.conftest import REPO_ROOT
from tests.web.factories import (PASSWORD, AnnotatorFactory, AssignmentFactory, ItemFactory, ProjectFactory,
                                 QueryBatchFactory, StaffFactory)
from tests.web.labeling_support import labeling_dirs, poll_js  # noqa: F401
from tests.web.test_labeling_browser import browser_page  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_hashes_and_clean_cache(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()  # throttle counters live in the cache
    yield
    cache.clear()


@pytest.fixture
def work(labeling_dirs):
    """An annotator with two open assignments in a labeling project, and a staff member."""
    ann = AnnotatorFactory(username="hard_ann")
    project = ProjectFactory(state=Project.State.LABELING)
    batch = QueryBatchFactory(project=project)
    asgs = [AssignmentFactory(batch=batch, item=ItemFactory(project=project), labeler=ann,
                              kind=Assignment.Kind.FIRST_LABEL) for _ in range(2)]
    return {"ann": ann, "project": project, "asgs": asgs, "staff": StaffFactory(username="hard_staff")}


# ---- manage.py check --deploy -------------------------------------------------------------------


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SECURE_", "SESSION_COOKIE", "CSRF_COOKIE", "DEBUG", "DATABASE_URL"))}
    env.update({"DEBUG": "0", "SECRET_KEY": "k8#Jd9!x2Lq@7vTz$Wm4&Rb6^Np1*Hs3(Gf5)Yc0-Ue8+Ai_Oo-prod-like",
                "ALLOWED_HOSTS": "labels.example.com", "ROBUSTAL_DATA_DIR": str(tmp_path)})
    r = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "System check identified no issues" in r.stdout
    # HSTS preload is the only deliberately silenced check (the domain owner opts in)
    assert "(1 silenced)" in r.stdout


def test_production_settings_refuse_to_start_without_a_secret_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "ROBUSTAL_ALLOW_DEV_SECRET")}
    env.update({"DEBUG": "0", "ROBUSTAL_DATA_DIR": str(tmp_path)})
    r = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "SECRET_KEY is not set" in r.stderr


# ---- login lockout (django-axes) ----------------------------------------------------------------


def bad_logins(client: Client, username: str, n: int):
    return [client.post("/accounts/login/", {"username": username, "password": "wrong"}) for _ in range(n)]


def test_login_locks_after_repeated_failures_with_a_clear_message(work, settings):
    ann = work["ann"]
    client = Client()
    first = bad_logins(client, ann.username, settings.AXES_FAILURE_LIMIT - 1)
    assert all(r.status_code == 200 for r in first)  # the form again, with its error
    locked = client.post("/accounts/login/", {"username": ann.username, "password": "wrong"})
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode() and locked["Retry-After"] == "900"
    # now even the right password is refused, on the page and on the token endpoint
    r = client.post("/accounts/login/", {"username": ann.username, "password": PASSWORD})
    assert r.status_code == 429 and "_auth_user_id" not in client.session
    r = client.post("/api/token/", {"username": ann.username, "password": PASSWORD})
    assert r.status_code == 429 and "Too many failed logins" in r.json()["detail"]
    # another account from the same address is not affected
    other = AnnotatorFactory(username="hard_other")
    assert Client().post("/accounts/login/", {"username": other.username, "password": PASSWORD}).status_code == 302


def test_token_endpoint_counts_failures_too(work, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post("/api/token/", {"username": "hard_ann", "password": "x"}).status_code == 400
    r = client.post("/api/token/", {"username": "hard_ann", "password": "x"})
    assert r.status_code == 429 and r.json()["code"] == "login_locked"


def test_staff_unlock_and_cool_off(work, settings):
    from axes.models import AccessAttempt

    ann = work["ann"]
    bad_logins(Client(), ann.username, settings.AXES_FAILURE_LIMIT)
    assert Client().post("/accounts/login/", {"username": ann.username, "password": PASSWORD}).status_code == 429
    call_command("axes_reset_username", ann.username)  # what staff run (or delete it in the admin)
    assert Client().post("/accounts/login/", {"username": ann.username, "password": PASSWORD}).status_code == 302
    # lock again, then let the cool-off pass (the attempts age instead of the test sleeping)
    bad_logins(Client(), ann.username, settings.AXES_FAILURE_LIMIT)
    assert Client().post("/accounts/login/", {"username": ann.username, "password": PASSWORD}).status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert Client().post("/accounts/login/", {"username": ann.username, "password": PASSWORD}).status_code == 302


def test_staff_see_lockouts_in_the_admin(work, settings):
    bad_logins(Client(), "hard_ann", settings.AXES_FAILURE_LIMIT)
    staff = work["staff"]
    staff.is_superuser = True
    staff.save()
    c = Client()
    c.force_login(staff)
    page = c.get("/admin/axes/accessattempt/")
    assert page.status_code == 200 and "hard_ann" in page.content.decode()


# ---- API throttles ------------------------------------------------------------------------------


def test_default_throttle_rates_are_high_for_users_and_set_for_anonymous(settings):
    rf = settings.REST_FRAMEWORK
    if "API_THROTTLE_USER" not in os.environ and "API_THROTTLE_ANON" not in os.environ:
        assert rf["DEFAULT_THROTTLE_RATES"] == {"anon": "120/minute", "user": "3000/minute"}
    assert set(rf["DEFAULT_THROTTLE_CLASSES"]) <= {"rest_framework.throttling.AnonRateThrottle",
                                                   "rest_framework.throttling.UserRateThrottle"}


def test_throttled_clients_get_429_with_a_message(work, monkeypatch):
    monkeypatch.setattr(throttling.SimpleRateThrottle, "THROTTLE_RATES", {"anon": "3/minute", "user": "4/minute"})
    anon = Client()
    codes = [anon.get("/api/schema/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    token = Token.objects.create(user=work["ann"]).key
    api = Client(HTTP_AUTHORIZATION=f"Token {token}")
    codes = [api.get("/api/labeling/next/").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 200, 429]
    r = api.get("/api/labeling/next/")
    assert r.status_code == 429 and "throttled" in r.json()["detail"] and int(r["Retry-After"]) > 0
    # another user has their own budget
    other = AnnotatorFactory(username="hard_other")
    assert Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=other).key}").get(
        "/api/labeling/next/").status_code == 200


# ---- CSRF on session-authenticated writes -------------------------------------------------------


def test_session_api_writes_need_the_csrf_token(work):
    asg = work["asgs"][0]
    c = Client(enforce_csrf_checks=True)
    c.force_login(work["ann"])
    url = f"/api/labeling/assignments/{asg.pk}/annotation/"
    r = c.post(url, {"label": 1}, content_type="application/json")
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    asg.refresh_from_db()
    assert asg.status == Assignment.Status.OPEN  # nothing was written
    c.get(f"/labeling/projects/{work['project'].pk}/annotate/")  # the page sets the csrftoken cookie
    token = c.cookies["csrftoken"].value
    r = c.post(url, {"label": 1}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert r.status_code == 201


def test_token_api_writes_need_no_csrf_token(work):
    asg = work["asgs"][1]
    token = Token.objects.create(user=work["ann"]).key
    c = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Token {token}")
    r = c.post(f"/api/labeling/assignments/{asg.pk}/annotation/", {"label": 0}, content_type="application/json")
    assert r.status_code == 201


def test_session_page_writes_need_the_csrf_token(work):
    c = Client(enforce_csrf_checks=True)
    c.force_login(work["staff"])
    r = c.post(f"/labeling/staff/projects/{work['project'].pk}/resume/")
    assert r.status_code == 403
    r = c.post("/accounts/logout/")
    assert r.status_code == 403 and "_auth_user_id" in c.session


# ---- request size limits ------------------------------------------------------------------------


def test_oversized_json_body_is_refused_before_reading(work, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    token = Token.objects.create(user=work["ann"]).key
    c = Client(HTTP_AUTHORIZATION=f"Token {token}")
    asg = work["asgs"][0]
    body = json.dumps({"label": 1, "pad": "x" * 20_000})
    r = c.post(f"/api/labeling/assignments/{asg.pk}/annotation/", body, content_type="application/json")
    assert r.status_code == 413
    assert r.json()["detail"].startswith("The request is larger than 10000 bytes")
    asg.refresh_from_db()
    assert asg.status == Assignment.Status.OPEN
    small = c.post(f"/api/labeling/assignments/{asg.pk}/annotation/", {"label": 1}, content_type="application/json")
    assert small.status_code == 201


def test_oversized_upload_is_refused_with_413(work, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.ROBUSTAL_MAX_UPLOAD_BYTES = 1000
    c = Client()
    c.force_login(work["staff"])
    project = ProjectFactory(name="upload target")
    r = c.post(f"/labeling/staff/projects/{project.pk}/import/",
               {"archive": SimpleUploadedFile("big.zip", b"\x00" * (1024 * 1024 + 5000))})
    assert r.status_code == 413 and "The request is larger than" in r.content.decode()
    assert not project.items.exists()


# ---- security headers and CSP -------------------------------------------------------------------

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>\s*\S", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def csp_directives(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}


@pytest.mark.parametrize("who,url", [
    ("anon", "/accounts/login/"), ("ann", "/"), ("ann", "annotate"), ("ann", "/api/labeling/next/"),
    ("staff", "staff"), ("staff", "/trust/"), ("staff", "/admin/"), ("anon", "/health/"),
])
def test_security_headers_on_pages_and_api(who, url, work, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    c = Client()
    if who != "anon":
        c.force_login(work[who])
    url = {"annotate": f"/labeling/projects/{work['project'].pk}/annotate/",
           "staff": f"/labeling/staff/projects/{work['project'].pk}/"}.get(url, url)
    if who == "staff" and url == "/admin/":
        work["staff"].is_superuser = True
        work["staff"].save()
    r = c.get(url, secure=True)
    assert r.status_code == 200, (url, r.status_code)
    assert r["X-Content-Type-Options"] == "nosniff"
    assert r["Referrer-Policy"] == "same-origin"
    assert r["X-Frame-Options"] == "DENY"
    assert r["Strict-Transport-Security"].startswith("max-age=3600")
    csp = csp_directives(r)
    assert csp["script-src"] == ["'self'"] and csp["default-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
    if r["Content-Type"].startswith("text/html"):
        html = r.content.decode()
        assert not INLINE_SCRIPT.search(html), f"inline script on {url}"
        assert not INLINE_HANDLER.search(html), f"inline event handler on {url}"


def test_the_swagger_page_needs_no_csp_exception(work):
    """Swagger UI is served from our own static files (drf-spectacular-sidecar): the docs page has
    the same 'self'-only policy as every other page (tests/web/test_api_docs.py checks the page)."""
    c = Client()
    docs = csp_directives(c.get("/api/docs/"))
    assert docs == csp_directives(c.get("/accounts/login/"))
    assert docs["script-src"] == ["'self'"] and "'unsafe-inline'" not in docs["style-src"]


def test_csp_built_once_matches_django_csp_and_follows_settings(settings, rf):
    """Our CSP middleware caches the static policy; it must write what django-csp writes, and a
    settings change (or a nonce, or a per-view override) must not be served from the cache."""
    from csp.middleware import CSPMiddleware as DjangoCSP
    from django.http import HttpResponse

    from config.middleware import CSPMiddleware

    def headers(middleware_class, mutate=None):
        mw = middleware_class(lambda request: HttpResponse())
        request = rf.get("/x/")
        mw.process_request(request)
        response = HttpResponse()
        if mutate:
            mutate(request, response)
        mw.process_response(request, response)
        return response.get("Content-Security-Policy"), response.get("Content-Security-Policy-Report-Only")

    assert headers(CSPMiddleware) == headers(DjangoCSP) and headers(CSPMiddleware)[0]
    assert headers(CSPMiddleware) == headers(CSPMiddleware)  # from the cache
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": ["'none'"]}}
    settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = {"DIRECTIVES": {"img-src": ["'self'"]}}
    changed = headers(CSPMiddleware)
    assert changed == headers(DjangoCSP) and changed[0] == "default-src 'none'" and "img-src 'self'" in changed[1]
    from csp.constants import NONCE
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": ["'none'"], "script-src": ["'self'", NONCE]}}
    assert "nonce-" not in headers(CSPMiddleware)[0]
    with_nonce = headers(CSPMiddleware, lambda request, response: str(request.csp_nonce))
    assert "'nonce-" in with_nonce[0]  # a page that used its nonce gets it in its header ...
    assert "nonce-" not in headers(CSPMiddleware)[0]  # ... and only that page
    widened = headers(CSPMiddleware, lambda request, response: setattr(
        response, "_csp_update", {"script-src": ["https://cdn.example"]}))
    assert "https://cdn.example" in widened[0]
    assert "https://cdn.example" not in headers(CSPMiddleware)[0]  # the override did not leak into the cache


@pytest.mark.browser
def test_annotate_page_runs_under_the_csp_without_violations(labeling_dirs, live_server, browser_page):
    """The real page in Chromium: the CSP blocks nothing the page needs (no violation reported)."""
    ann = AnnotatorFactory(username="csp_ann")
    project = ProjectFactory(state=Project.State.LABELING)
    AssignmentFactory(batch=QueryBatchFactory(project=project), item=ItemFactory(project=project), labeler=ann)
    page = browser_page
    violations = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{live_server.url}/accounts/login/?next=/labeling/projects/{project.pk}/annotate/")
    page.fill("#id_username", ann.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#work:not([hidden]) #image")
    poll_js(page, "document.getElementById('image').naturalWidth > 0")
    assert not violations, violations
    # and the policy is enforced: an injected inline script does not run, and the browser says why
    page.evaluate("() => { window.__csp = []; document.addEventListener('securitypolicyviolation',"
                  " e => window.__csp.push(e.effectiveDirective));"
                  " const s = document.createElement('script'); s.textContent = 'window.__injected = 1';"
                  " document.head.appendChild(s); }")
    poll_js(page, "window.__csp.length > 0")
    assert page.evaluate("window.__injected === undefined")
    assert page.evaluate("window.__csp") == ["script-src-elem"]
