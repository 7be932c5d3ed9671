"""/api/docs/: Swagger UI from our own static files (drf-spectacular-sidecar), no other host, the site's CSP.

The page, its start script and every file they reference are served by us (WhiteNoise); the
Content-Security-Policy stays 'self' only. In a real Chromium with every other host blocked, the
page lists the API's operations and reports no CSP violation.
"""
from __future__ import annotations

import os
import re
import shutil

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

URL_ATTR = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def referenced(html: str) -> list[str]:
    return URL_ATTR.findall(html)


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_docs_page_references_only_our_own_files_and_they_are_served():
    client = Client()
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "cdn." not in html and "jsdelivr" not in html and "unpkg" not in html
    urls = referenced(html)
    assert len(urls) >= 4, urls  # favicon, two style sheets, two scripts, the start script
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not on our own host"
    assert "<style" not in html and not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline code in the page"
    for url in urls:
        r = client.get(url.replace("&amp;", "&"))
        assert r.status_code == 200, (url, r.status_code)
        assert body_of(r), url
    bundle = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(body_of(bundle)) > 100_000  # the real Swagger UI build
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle(" in script.content.decode() and "/api/schema/" in script.content.decode()


def test_docs_page_keeps_the_sites_self_only_policy():
    csp = Client().get("/api/docs/")["Content-Security-Policy"]
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    for name in ("script-src", "style-src", "img-src", "connect-src", "default-src"):
        assert "'self'" in directives[name], (name, csp)
        assert not [s for s in directives[name] if s.startswith("http") or s == "*"], (name, csp)
    assert "'unsafe-inline'" not in directives["script-src"] and "'unsafe-inline'" not in directives["style-src"]


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_swagger_renders_offline_in_chromium(live_server, monkeypatch):
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    problems, foreign = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                           "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page()

            def route(r):  # offline: only the live server answers
                if r.request.url.startswith(live_server.url):
                    r.continue_()
                else:
                    foreign.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{live_server.url}/api/docs/")
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
            from django.db import connections

            connections.close_all()
    assert any("/api/labeling/projects/" in p for p in paths) and any("/api/labeling/next/" in p for p in paths)
    assert not foreign, f"the docs page asked other hosts: {foreign}"
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
