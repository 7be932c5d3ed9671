"""End to end in a real headless Chromium: an annotator labels a batch with the keyboard on a phone-sized
screen, sees "the model is updating", and the next batch appears.

The loop task is captured instead of sent to a broker and run in-process by the test (the
worker path is covered by test_labeling_worker.py).
"""
from __future__ import annotations

import os
import shutil

import pytest

from labeling import loop_step, services, workflow
from labeling.models import Assignment, Project, QueryBatch
from tests.web.factories import PASSWORD, AnnotatorFactory
from tests.web.labeling_support import digits_project, labeling_dirs, poll_js  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser_page(monkeypatch):
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are plain sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
        page = context.new_page()
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()
            # ORM calls made while Playwright's loop runs get their own (context-local) connection:
            # close it here, in that same context, or PostgreSQL cannot drop the test database.
            from django.db import connections

            connections.close_all()


def test_annotator_labels_a_batch_with_the_keyboard_and_the_next_batch_appears(
        labeling_dirs, live_server, browser_page, monkeypatch):
    sent = []
    monkeypatch.setattr(workflow, "enqueue", lambda name, *args, countdown=None: sent.append((name, args)))
    alice = AnnotatorFactory(username="alice")
    project = digits_project(n=30, config={"strategy": "robust", "initial_size": 4, "batch_size": 4,
                                           "secured_size": 4, "budget": 40})
    page = browser_page
    requested = []  # paths the page asked for, in order (prefetch: each image once, ahead of time)
    page.on("request", lambda req: requested.append((req.method, req.url.split(live_server.url, 1)[-1])))

    page.goto(f"{live_server.url}/accounts/login/?next=/labeling/projects/{project.pk}/annotate/")
    page.fill("#id_username", alice.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#work:not([hidden]) #image")
    assert page.evaluate("getComputedStyle(document.getElementById('image')).imageRendering") == "pixelated"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # fits a phone screen
    assert page.locator(".class-button").count() == 3
    # digit classes: each button shows its own digit as its key ("0" labels class "0")
    assert page.locator(".class-button kbd").all_inner_texts() == ["0", "1", "2"]
    assert page.locator(".class-button .class-name").all_inner_texts() == ["0", "1", "2"]

    def until(expression: str, timeout: float = 20.0):
        poll_js(page, expression, timeout)

    def shown() -> Assignment:
        until("document.getElementById('annotate').dataset.assignment !== ''")
        ident = int(page.get_attribute("#annotate", "data-assignment"))
        until("document.getElementById('image').complete && document.getElementById('image').naturalWidth > 0")
        return Assignment.objects.select_related("item").get(pk=ident)

    def press_answer(asg: Assignment):
        page.keyboard.press(project.classes[asg.item.ground_truth])  # the digit shown on its button
        until(f"document.getElementById('annotate').dataset.assignment !== '{asg.pk}'")

    # one answer, undone with the keyboard: the same image comes back
    first = shown()
    page.keyboard.press(str((first.item.ground_truth + 1) % 3))  # a wrong answer...
    until(f"document.getElementById('annotate').dataset.assignment !== '{first.pk}'")
    page.keyboard.press("u")  # ...taken back
    until(f"document.getElementById('annotate').dataset.assignment === '{first.pk}'")
    page.wait_for_selector("#notice:not([hidden])")  # and the page says so
    assert "Undone" in page.inner_text("#notice")
    assert not Assignment.objects.get(pk=first.pk).status == "done"

    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    for _ in range(batch0.assignments.count()):
        asg = shown()
        assert asg.batch_id == batch0.pk and asg.labeler_id == alice.pk
        press_answer(asg)
    page.wait_for_selector("#banner.updating:not([hidden])")
    assert "updating" in page.inner_text("#banner").lower()
    assert page.inner_text("#progress-text").startswith("Batch: 4 / 4")
    # the next image loads while the current one is shown: the second one before the first answer,
    # and those after the undo's reshuffle exactly once (the preloaded picture is shown, not fetched again)
    images = [path for method, path in requested if path.endswith("/image")]
    later = [a.pk for a in batch0.assignments.order_by("id")][2:]
    assert all(images.count(f"/labeling/assignments/{pk}/image") == 1 for pk in later), images
    answers = [k for k, (method, path) in enumerate(requested) if method == "POST" and path.endswith("/annotation/")]
    second = next(k for k, (m, path) in enumerate(requested) if path.endswith("/image") and first.pk != int(
        path.split("/")[-2]))
    assert second < answers[0], requested
    assert sent == [("prepare_features", (project.pk,)), ("process_batch", (batch0.pk,))]

    # the "worker": run the loop task in-process; the page's status polling picks up the new batch
    assert loop_step.advance_loop(batch_id=batch0.pk).startswith("opened batch 1")
    page.wait_for_selector("#work:not([hidden])", timeout=15_000)
    nxt = shown()
    assert nxt.batch.iteration == 1 and nxt.status == "open"
    assert page.locator("#banner").is_hidden()
    answers = {a.item.ground_truth for a in Assignment.objects.filter(batch=batch0).select_related("item", "annotation")}
    assert {a.annotation.label for a in Assignment.objects.filter(batch=batch0)} <= answers
    assert all(a.annotation.label == a.item.ground_truth  # each key labeled the class it shows
               for a in Assignment.objects.filter(batch=batch0).select_related("item", "annotation"))
    project.refresh_from_db()
    assert project.state == Project.State.LABELING and project.iteration == 1
    # nothing secret reached the page
    html = page.content()
    for secret in ("ground_truth", "is_secured", "reannotation", nxt.item.image.name):
        assert secret not in html


@pytest.fixture
def annotating(labeling_dirs, live_server, browser_page, monkeypatch):
    """alice on the annotate page of a small started project (loop task not sent)."""
    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)
    alice = AnnotatorFactory(username="alice")
    project = digits_project(n=30, config={"initial_size": 4, "batch_size": 4, "secured_size": 4})
    _login_and_open(browser_page, live_server, project)
    return browser_page, alice


def _login_and_open(page, live_server, project, username="alice"):
    page.goto(f"{live_server.url}/accounts/login/?next=/labeling/projects/{project.pk}/annotate/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#work:not([hidden])")


def test_a_failed_answer_stays_visible_and_can_be_sent_again(annotating):
    page, alice = annotating
    first = page.get_attribute("#annotate", "data-assignment")
    failures = {"left": 1}

    def fail_once(route):
        if failures["left"]:
            failures["left"] -= 1
            route.fulfill(status=500, content_type="application/json", body='{"detail": "boom"}')
        else:
            route.continue_()

    page.route("**/annotation/", fail_once)
    page.locator("#classes button").first.click()
    page.wait_for_selector("#error:not([hidden])")
    page.wait_for_timeout(1500)  # it does not flash away
    assert page.is_visible("#error") and "not saved" in page.inner_text("#error-text")
    assert page.get_attribute("#annotate", "data-assignment") == first  # still the same image
    assert not Assignment.objects.filter(pk=int(first), status="done").exists()
    page.keyboard.press("1")  # a class key does not answer over the error
    page.wait_for_timeout(300)
    assert not Assignment.objects.filter(pk=int(first), status="done").exists()
    page.click("#retry")
    poll_js(page, f"document.getElementById('annotate').dataset.assignment !== '{first}'")
    assert page.is_hidden("#error")
    assert Assignment.objects.get(pk=int(first)).labeler == alice and Assignment.objects.get(pk=int(first)).status == "done"


def test_space_and_enter_never_label(annotating):
    page, alice = annotating
    first = page.get_attribute("#annotate", "data-assignment")
    page.locator("#classes button").first.click()  # a mouse answer leaves no focused button behind
    poll_js(page, f"document.getElementById('annotate').dataset.assignment !== '{first}'")
    second = page.get_attribute("#annotate", "data-assignment")
    page.keyboard.press("Space")
    page.keyboard.press("Enter")
    page.wait_for_timeout(800)
    assert page.get_attribute("#annotate", "data-assignment") == second
    assert Assignment.objects.filter(labeler=alice, status="done").count() == 1
    page.locator("#classes button").first.focus()  # a class button that has the focus: still no answer
    page.keyboard.press("Enter")
    page.keyboard.press("Space")
    page.wait_for_timeout(800)
    assert page.get_attribute("#annotate", "data-assignment") == second
    assert Assignment.objects.filter(labeler=alice, status="done").count() == 1


def test_enter_works_on_the_other_controls(annotating):
    page, alice = annotating
    first = page.get_attribute("#annotate", "data-assignment")
    page.focus("#skip")
    page.keyboard.press("Enter")  # a keyboard user skips with Enter on the focused Skip button
    poll_js(page, f"document.getElementById('annotate').dataset.assignment !== '{first}'")
    assert Assignment.objects.get(pk=int(first)).status == "skipped"
    page.focus("#zoom-in")
    page.keyboard.press("Enter")
    poll_js(page, "document.getElementById('stage').style.getPropertyValue('--zoom') > 1")


def test_skip_and_undo_offline_say_so_and_change_nothing(annotating):
    page, alice = annotating
    first = page.get_attribute("#annotate", "data-assignment")
    page.context.set_offline(True)
    page.click("#skip")
    page.wait_for_selector("#error:not([hidden])")
    assert "Could not skip" in page.inner_text("#error-text")
    assert page.get_attribute("#annotate", "data-assignment") == first
    assert page.is_hidden("#notice")  # no "Skipped" for a skip that did not happen
    page.context.set_offline(False)
    page.locator("#classes button").first.click()
    poll_js(page, f"document.getElementById('annotate').dataset.assignment !== '{first}'")
    page.context.set_offline(True)
    page.click("#undo")
    page.wait_for_selector("#error:not([hidden])")
    assert "Could not undo" in page.inner_text("#error-text")
    assert not page.is_disabled("#undo")  # still offered once the network is back
    page.context.set_offline(False)
    page.click("#undo")
    poll_js(page, f"document.getElementById('annotate').dataset.assignment === '{first}'")
    assert Assignment.objects.filter(labeler=alice, status="done").count() == 0
    page.click("#skip")  # online: the skip goes through and the page confirms it (the undo's notice may still show)
    poll_js(page, "document.getElementById('notice').textContent.indexOf('Skipped') === 0 && "
                  "!document.getElementById('notice').hidden")
    assert Assignment.objects.get(pk=int(first)).status == "skipped"


def test_an_answer_after_the_session_ended_is_kept_until_they_log_in_again(annotating, live_server):
    page, alice = annotating
    first = page.get_attribute("#annotate", "data-assignment")
    other = page.context.new_page()  # log out in another tab
    other.goto(f"{live_server.url}/")
    other.click("button:has-text('Log out')")
    other.wait_for_load_state()
    page.keyboard.press("1")
    page.wait_for_selector("#error:not([hidden])")
    assert "session ended" in page.inner_text("#error-text") and page.is_visible("#retry")
    assert page.is_visible("#error-login") and "/accounts/login/" in page.get_attribute("#error-login", "href")
    assert not Assignment.objects.filter(pk=int(first), status="done").exists()
    other.goto(f"{live_server.url}/accounts/login/?next=/")  # log in again in the other tab
    other.fill("#id_username", alice.username)
    other.fill("#id_password", PASSWORD)
    other.click("button[type=submit]")
    other.wait_for_load_state()
    page.click("#retry")  # the kept answer goes with the new session's CSRF token
    poll_js(page, f"document.getElementById('annotate').dataset.assignment !== '{first}'")
    done = Assignment.objects.get(pk=int(first))
    assert done.status == "done" and done.labeler == alice and done.annotation.label == 1
