"""Error pages a person can read: styled 403/404/500 and lockout pages with a way home, no
Django debug URL list even with DEBUG=1 (`DEBUG=1 bash scripts/run.sh` for development), and annotators who open a staff
page or the admin get the 403 page instead of a login form."""
from __future__ import annotations

import sys
import types

import pytest
from django.test import Client

from tests.web.factories import PASSWORD, AnnotatorFactory, ProjectFactory, StaffFactory

pytestmark = pytest.mark.django_db

DEBUG_MARKERS = ("Using the URLconf", "URL patterns", "Django tried these URL patterns", "technical_404",
                 "You’re seeing this error because you have", "DEBUG = True")


def styled(response, status: int) -> str:
    html = response.content.decode()
    assert response.status_code == status, (response.status_code, html[:300])
    assert 'id="error-page"' in html and f'data-status="{status}"' in html
    assert 'href="/"' in html  # a way home
    assert "/static/css/app.css" in html  # the site's look, not a bare page
    for marker in DEBUG_MARKERS:
        assert marker not in html, marker
    return html


@pytest.fixture
def annotator_client():
    c = Client()
    c.force_login(AnnotatorFactory(username="err_ann"))
    return c


@pytest.mark.parametrize("debug", [True, False])
def test_unknown_address_gets_the_styled_404_without_the_url_list(debug, settings, annotator_client):
    settings.DEBUG = debug
    for c in (Client(), annotator_client):
        html = styled(c.get("/no/such/page/"), 404)
        assert "admin/" not in html and "api/labeling" not in html  # no URL pattern listed
    # an Http404 raised by a view (a project that is not yours) as well
    project = ProjectFactory(state="labeling")
    styled(annotator_client.get(f"/labeling/projects/{project.pk}/annotate/"), 404)
    # the API keeps answering in JSON
    r = annotator_client.get("/api/labeling/no-such-endpoint/")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_debug_404_page_would_list_urls_without_the_middleware(settings, annotator_client):
    """The check above is not blind: Django's own DEBUG page does hold the markers."""
    settings.DEBUG = True
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.endswith("FriendlyErrorPagesMiddleware")]
    html = annotator_client.get("/no/such/page/").content.decode()
    assert "Using the URLconf" in html


def test_a_slash_is_still_appended(settings, annotator_client):
    settings.DEBUG = True
    r = annotator_client.get("/labeling/staff/projects/new")
    assert r.status_code == 301 and r["Location"].endswith("/labeling/staff/projects/new/")


@pytest.mark.parametrize("debug", [True, False])
def test_annotator_on_a_staff_page_or_the_admin_gets_the_styled_403(debug, settings, annotator_client):
    settings.DEBUG = debug
    project = ProjectFactory()
    for url in ("/labeling/staff/projects/new/", f"/labeling/staff/projects/{project.pk}/", "/trust/",
                "/admin/", "/admin/labeling/project/"):
        html = styled(annotator_client.get(url), 403)
        assert "This page is for staff" in html and "err_ann" in html, url
        assert "Log in as someone else" in html
    # anonymous visitors still go to a login page
    r = Client().get("/admin/")
    assert r.status_code == 302 and "/admin/login/" in r["Location"]
    r = Client().get("/labeling/staff/projects/new/")
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]
    # staff get the page
    staff = Client()
    staff.force_login(StaffFactory(username="err_staff"))
    assert staff.get("/labeling/staff/projects/new/").status_code == 200


def _boom(request):
    raise RuntimeError("boom")


def test_server_error_gets_the_styled_500(settings):
    from django.urls import path

    import config.urls

    module = types.ModuleType("tests.web._boom_urls")
    module.urlpatterns = [*config.urls.urlpatterns, path("boom/", _boom), path("api/boom/", _boom)]
    module.handler500 = config.urls.handler500
    module.handler404 = config.urls.handler404
    sys.modules[module.__name__] = module
    try:
        settings.ROOT_URLCONF = module.__name__
        c = Client(raise_request_exception=False)
        c.force_login(AnnotatorFactory(username="err_500"))
        html = styled(c.get("/boom/"), 500)
        assert "boom" not in html and "Traceback" not in html
        r = c.get("/api/boom/")
        assert r.status_code == 500 and r.json()["code"] == "server_error"
    finally:
        del sys.modules[module.__name__]


def test_login_lockout_page_is_styled(settings):
    user = AnnotatorFactory(username="err_locked")
    c = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        r = c.post("/accounts/login/", {"username": user.username, "password": "wrong"})
    html = r.content.decode()
    assert r.status_code == 429 and 'id="error-page"' in html and "/static/css/app.css" in html
    assert "Too many failed logins" in html and 'href="/accounts/login/"' in html
    assert c.post("/accounts/login/", {"username": user.username, "password": PASSWORD}).status_code == 429


@pytest.mark.django_db
def test_admin_pages_carry_the_empty_favicon(client):
    client.force_login(StaffFactory(username="icon_boss", is_superuser=True))
    page = client.get("/admin/")
    assert page.status_code == 200 and b'<link rel="icon" href="data:,">' in page.content
    assert b"Django administration" in page.content or b"site-name" in page.content  # still the admin's own page
