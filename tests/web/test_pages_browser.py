"""The annotator's page as people use it, in Debian's Chromium: project instructions, image zoom and
contrast (crisp tiny images, smooth photos), and the phone layout with every control in view."""
from __future__ import annotations

import os
import shutil

import pytest

from labeling import importers, services, workflow
from labeling.models import Assignment
from tests.web.factories import PASSWORD, AnnotatorFactory
from tests.web.labeling_support import digits_project, labeling_dirs, poll_js  # noqa: F401
from tests.web.test_labeling_browser import ARGS, CHROMIUM

pytestmark = [pytest.mark.browser, pytest.mark.slow]

INSTRUCTIONS = "Label the digit you see.\nIf the image is unreadable, press Skip."
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True, "device_scale_factor": 1}
DESKTOP = {"viewport": {"width": 1280, "height": 900}, "device_scale_factor": 1}


@pytest.fixture
def chromium(monkeypatch):
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        contexts = []

        def new_page(**options):
            context = browser.new_context(**options)
            contexts.append(context)
            page = context.new_page()
            page.set_default_timeout(20_000)
            return page
        try:
            yield new_page
        finally:
            for context in contexts:
                context.close()
            browser.close()
            from django.db import connections

            connections.close_all()


def open_annotate(page, live_server, project, username):
    page.goto(f"{live_server.url}/accounts/login/?next=/labeling/projects/{project.pk}/annotate/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#work:not([hidden])")
    poll_js(page, "document.getElementById('image').complete && document.getElementById('image').naturalWidth > 0")


def screenshot(page, name):
    if os.environ.get("ROBUSTAL_SCREENSHOT_DIR"):  # for looking at the page by eye
        page.screenshot(path=os.path.join(os.environ["ROBUSTAL_SCREENSHOT_DIR"], name), full_page=name.startswith(("staff", "settings")))


def project_with(classes, *, description=INSTRUCTIONS, upscale=4, name="digits"):
    project = digits_project(name=name, n=40, classes=classes, start=False,
                             config={"initial_size": 6, "secured_size": 4, "batch_size": 4})
    if upscale != 4:  # same digits, other pixel size
        from learner.data import load_digits

        project.items.all().delete()
        data = load_digits(classes=list(classes), pool_size=40, test_size=0, seed=0)
        assert importers.import_arrays(project=project, images=data.x_pool, labels=data.y_pool, upscale=upscale).ok
    project.description = description
    project.save(update_fields=["description"])
    services.start_project(project=project)
    return project


def in_view(page, selector) -> list[dict]:
    """Bounding boxes of every element matching ``selector`` that lies outside the viewport."""
    return page.evaluate("""sel => Array.from(document.querySelectorAll(sel)).map(e => {
        const r = e.getBoundingClientRect();
        return {sel, text: e.innerText, top: r.top, bottom: r.bottom, left: r.left, right: r.right,
                visible: r.width > 0 && r.height > 0};
      }).filter(b => !(b.visible && b.top >= 0 && b.left >= 0 && b.bottom <= innerHeight && b.right <= innerWidth))""",
                         selector)


CONTROLS = ("#classes .class-button", "#skip", "#undo", "#zoom-in", "#zoom-out", "#zoom-reset", "#contrast",
            "#instructions > summary")


@pytest.mark.parametrize("classes,viewport", [
    (("0", "1", "2"), {"width": 390, "height": 844}),
    (tuple("0123456789"), {"width": 390, "height": 844}),
    (("0", "1", "2"), {"width": 390, "height": 664}),  # iPhone 12 with the browser's own bars
])
def test_phone_every_control_in_view_and_no_key_hints(classes, viewport, labeling_dirs, live_server, chromium,
                                                      monkeypatch):
    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)
    AnnotatorFactory(username="phone_ann")
    project = project_with(classes)
    page = chromium(**{**PHONE, "viewport": viewport})
    open_annotate(page, live_server, project, "phone_ann")
    assert page.evaluate("matchMedia('(hover: none)').matches")  # the emulated phone is a touch screen
    assert page.evaluate("scrollY") == 0
    assert page.locator("#classes .class-button").count() == len(classes)
    outside = [b for sel in CONTROLS for b in in_view(page, sel)]
    screenshot(page, f"phone-{len(classes)}-{viewport['height']}.png")
    assert not outside, outside
    stage = page.evaluate("(() => { const r = document.getElementById('stage').getBoundingClientRect();"
                          " return [r.width, r.height]; })()")
    assert stage[0] >= 300 and stage[1] >= 120, stage  # the image keeps a usable size
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    # no keyboard hints on a touch screen
    for sel in ("#classes kbd", "#skip kbd", "#undo kbd", ".hint"):
        assert page.evaluate(f"Array.from(document.querySelectorAll('{sel}')).every(e => e.offsetParent === null)"), sel
    # instructions: folded on a phone, one tap away
    assert page.evaluate("document.getElementById('instructions').open") is False
    page.tap("#instructions > summary")
    page.wait_for_selector("#instructions .instructions-text p")
    assert "Label the digit you see." in page.inner_text("#instructions")
    # a tap on a class still answers and the next image comes
    first = page.get_attribute("#annotate", "data-assignment")
    page.tap("#classes .class-button >> nth=0")
    poll_js(page, f"document.getElementById('annotate').dataset.assignment !== '{first}'")
    assert Assignment.objects.filter(pk=int(first), status="done").exists()


def test_instructions_open_on_a_wide_screen_and_the_choice_is_kept(labeling_dirs, live_server, chromium,
                                                                    monkeypatch):
    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)
    AnnotatorFactory(username="wide_ann")
    project = project_with(("0", "1", "2"))
    page = chromium(**DESKTOP)
    open_annotate(page, live_server, project, "wide_ann")
    assert page.is_visible("#instructions .instructions-text")
    html = page.inner_html("#instructions .instructions-text")
    assert "<p>Label the digit you see.<br>If the image is unreadable, press Skip.</p>" in html
    assert page.is_visible(".hint kbd")  # a mouse-and-keyboard screen keeps the key hints
    page.click("#instructions > summary")  # folded...
    assert page.evaluate("document.getElementById('instructions').open") is False
    page.reload()
    page.wait_for_selector("#work:not([hidden])")
    assert page.evaluate("document.getElementById('instructions').open") is False  # ...and remembered


def test_no_instructions_no_box(labeling_dirs, live_server, chromium, monkeypatch):
    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)
    AnnotatorFactory(username="plain_ann")
    project = project_with(("0", "1", "2"), description="")
    page = chromium(**DESKTOP)
    open_annotate(page, live_server, project, "plain_ann")
    assert page.locator("#instructions").count() == 0


def stage_state(page) -> dict:
    return page.evaluate("""(() => { const s = document.getElementById('stage'), i = s.querySelector('img');
        return {zoom: s.dataset.zoom, contrast: s.dataset.contrast || '1', rendering: s.dataset.rendering,
                css: getComputedStyle(i).imageRendering, filter: getComputedStyle(i).filter,
                imgWidth: i.getBoundingClientRect().width, stageWidth: s.clientWidth,
                scrollable: s.scrollWidth > s.clientWidth}; })()""")


def test_zoom_and_contrast_by_keys_and_buttons_and_crisp_tiny_images(labeling_dirs, live_server, chromium,
                                                                     monkeypatch):
    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)
    ann = AnnotatorFactory(username="zoom_ann")
    project = project_with(("0", "1", "2"))  # 8x8 digits upscaled 4x: 32 px images
    page = chromium(**DESKTOP)
    open_annotate(page, live_server, project, "zoom_ann")
    s = stage_state(page)
    assert (s["zoom"], s["rendering"], s["css"], s["scrollable"]) == ("1", "pixelated", "pixelated", False)
    fit_width = s["imgWidth"]
    page.keyboard.press("+")
    page.keyboard.press("+")
    s = stage_state(page)
    assert s["zoom"] == "2" and s["scrollable"] and s["imgWidth"] == pytest.approx(2 * fit_width, rel=0.02)
    page.keyboard.press("-")
    assert stage_state(page)["zoom"] == "1.5"
    page.click("#zoom-in")
    assert stage_state(page)["zoom"] == "2"
    page.keyboard.press("z")
    assert stage_state(page)["zoom"] == "1" and page.is_disabled("#zoom-out")
    page.keyboard.press("c")
    s = stage_state(page)
    assert s["contrast"] == "1.6" and "contrast(1.6)" in s["filter"]
    page.click("#contrast")
    assert stage_state(page)["contrast"] == "2.4" and page.get_attribute("#contrast", "aria-pressed") == "true"
    # none of these keys or clicks answered anything
    assert not Assignment.objects.filter(labeler=ann, status="done").exists()
    # the next image: zoom back to fit, contrast kept
    page.keyboard.press("+")
    first = page.get_attribute("#annotate", "data-assignment")
    page.keyboard.press("0")
    poll_js(page, f"document.getElementById('annotate').dataset.assignment !== '{first}'")
    poll_js(page, "document.getElementById('stage').dataset.zoom === '1'")
    assert stage_state(page)["contrast"] == "2.4"
    screenshot(page, "zoom-desktop.png")


def test_photos_are_scaled_smoothly(labeling_dirs, live_server, chromium, monkeypatch):
    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)
    AnnotatorFactory(username="photo_ann")
    project = project_with(("0", "1", "2"), upscale=32)  # 256 px images
    page = chromium(**DESKTOP)
    open_annotate(page, live_server, project, "photo_ann")
    assert page.evaluate("document.getElementById('image').naturalWidth") == 256
    s = stage_state(page)
    assert (s["rendering"], s["css"]) == ("smooth", "auto")


# ---- staff pages ----------------------------------------------------------------------------------


def login(page, live_server, username, next_url="/"):
    page.goto(f"{live_server.url}/accounts/login/?next={next_url}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def no_page_scroll_sideways(page):
    width = page.viewport_size["width"]  # a phone widens its layout viewport to overflowing content: compare with the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= width, page.url


@pytest.mark.parametrize("options", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_staff_settings_form_warns_live_and_saves(options, labeling_dirs, live_server, chromium):
    from tests.web.factories import ItemFactory, ProjectFactory, StaffFactory

    StaffFactory(username="form_boss")
    project = ProjectFactory(name="small pool", config={"secured_size": 50, "initial_size": 20})
    for _ in range(40):
        ItemFactory(project=project)
    page = chromium(**options)
    login(page, live_server, "form_boss", f"/labeling/staff/projects/{project.pk}/")
    warning = page.locator("#start-fit")
    assert "warn" in warning.get_attribute("class") and "start will refuse" in warning.inner_text()
    no_page_scroll_sideways(page)
    live = page.locator("#settings-form #pool-fit")
    assert "start will refuse" in live.inner_text()
    page.fill("#settings-form [data-setting=secured_size]", "10")
    page.fill("#settings-form [data-setting=initial_size]", "10")
    assert "10 go to the secured set, 10 to the first batch, 20 remain" in live.inner_text()  # as typed
    assert "warn" not in live.get_attribute("class")
    assert page.is_visible("#setting-budget .help .default")  # each setting says its default...
    assert "Default:" in page.inner_text("#setting-batch_size") and "Items queried per iteration" in \
        page.inner_text("#setting-batch_size")  # ...and what it does
    assert not page.is_visible("#setting-verify_labels")  # the trust group starts folded...
    page.click("#settings-trust > summary")  # ...and opens as a user would open it
    assert "Second opinion on every label" in page.inner_text("#setting-verify_labels")
    page.select_option("#settings-form [data-setting=verify_labels]", "on")
    page.click("#settings-form button[type=submit]")
    page.wait_for_selector(".messages li")
    assert "Settings saved." in page.inner_text(".messages")
    assert "warn" not in page.get_attribute("#start-fit", "class")
    project.refresh_from_db()
    assert (project.config["secured_size"], project.config["initial_size"]) == (10, 10)
    assert project.config["verify_labels"] is True
    screenshot(page, f"settings-{'phone' if options is PHONE else 'desktop'}.png")


def test_new_project_page_explains_the_pool_it_needs(labeling_dirs, live_server, chromium):
    from labeling.models import Project
    from tests.web.factories import StaffFactory

    StaffFactory(username="new_boss")
    page = chromium(**PHONE)
    login(page, live_server, "new_boss", "/labeling/staff/projects/new/")
    assert "Start will need more than 70" in page.inner_text("#pool-fit")
    assert "warn" not in page.get_attribute("#pool-fit", "class")  # no images yet: a note, not a warning
    page.fill("#id_name", "from the browser")
    page.fill("#id_classes", "cat, dog")
    page.fill("#id_description", "Cats left, dogs right.")
    page.fill("[data-setting=secured_size]", "5")
    assert "Start will need more than 25" in page.inner_text("#pool-fit")
    page.select_option("[data-setting=strategy]", "margin")
    page.fill("[data-setting=epsilon]", "5")  # out of range: the page comes back with a summary in view
    page.click("#project-form button[type=submit]")
    page.wait_for_selector("[data-focus-on-load]")
    summary = page.locator("[data-focus-on-load]")
    assert "Performance check (epsilon): must be a number in [0.0, 1.0]" in summary.inner_text()
    assert page.evaluate("document.activeElement === document.querySelector('[data-focus-on-load]')")
    box = summary.bounding_box()
    assert box is not None and -1 <= box["y"] < page.viewport_size["height"]  # on screen, not 1,200 px down
    assert page.input_value("#id_name") == "from the browser"  # nothing typed is lost
    assert not Project.objects.filter(name="from the browser").exists()
    page.fill("[data-setting=epsilon]", "0.05")
    no_page_scroll_sideways(page)
    page.click("#project-form button[type=submit]")
    page.wait_for_selector(".messages li")
    assert page.url.endswith("#import") and page.locator("#import").is_visible()
    p = Project.objects.get(name="from the browser")
    assert (p.config["secured_size"], p.config["strategy"], p.description) == (5, "margin", "Cats left, dogs right.")


@pytest.mark.parametrize("options", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_staff_see_flagged_labelers_and_annotator_statistics(options, labeling_dirs, live_server, chromium):
    from labeling.models import TrustEvent
    from tests.web.factories import StaffFactory
    from tests.web.test_annotator_stats import build

    StaffFactory(username="notice_boss")
    project, good, sloppy = build()
    TrustEvent.objects.create(labeler=sloppy, project=project, reason="flagged", trust_after=0.7, note="p = 0.001")
    page = chromium(**options)
    login(page, live_server, "notice_boss")
    banner = page.locator("#trust-notices")
    assert banner.is_visible() and "st_sloppy" in banner.inner_text() and "flagged" in banner.inner_text()
    no_page_scroll_sideways(page)
    page.click("#trust-notices a.button")
    page.wait_for_selector("#labeler-state")
    # the trust chart's axis labels stay readable when the chart is drawn at phone width
    heights = page.evaluate("Array.from(document.querySelectorAll('.trust-chart text'))"
                            ".map(t => t.getBoundingClientRect().height)")
    assert heights and min(heights) >= 10, heights
    assert page.url.endswith(f"/trust/labelers/{sloppy.pk}/")
    page.goto(f"{live_server.url}/labeling/staff/projects/{project.pk}/")
    assert page.is_visible("#trust-notices")
    rows = page.locator("#annotator-stats tr.annotator-row")
    assert rows.count() == 2 and "flagged" in rows.nth(1).inner_text()
    no_page_scroll_sideways(page)  # the wide table scrolls inside its card
    screenshot(page, f"staff-project-{'phone' if options is PHONE else 'desktop'}.png")
    page.click("#trust-notices button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("#trust-notices").count() == 0
    page.goto(f"{live_server.url}/")
    assert page.locator("#trust-notices").count() == 0


def test_error_pages_in_the_browser(labeling_dirs, live_server, chromium, settings):
    settings.DEBUG = True  # DEBUG=1 bash scripts/run.sh (development): still no URL list
    AnnotatorFactory(username="lost_ann")
    page = chromium(**PHONE)
    login(page, live_server, "lost_ann")
    for url, status, text in (("/labeling/staff/projects/new/", 403, "This page is for staff"),
                              ("/admin/", 403, "This page is for staff"),
                              ("/no/such/page/", 404, "Page not found")):
        response = page.goto(f"{live_server.url}{url}")
        assert response.status == status, url
        assert text in page.inner_text("#error-page") and "Using the URLconf" not in page.content()
        no_page_scroll_sideways(page)
    page.click("#error-page a.button")
    page.wait_for_load_state()
    assert page.url == f"{live_server.url}/"


def test_staff_pages_fit_a_phone(labeling_dirs, live_server, chromium):
    from tests.web.factories import StaffFactory
    from tests.web.test_annotator_stats import build

    StaffFactory(username="phone_boss")
    project, good, sloppy = build()
    page = chromium(**PHONE)
    login(page, live_server, "phone_boss")
    for url in ("/", "/labeling/staff/projects/new/", f"/labeling/staff/projects/{project.pk}/", "/trust/",
                f"/trust/labelers/{sloppy.pk}/"):
        assert page.goto(f"{live_server.url}{url}").status == 200
        no_page_scroll_sideways(page)
