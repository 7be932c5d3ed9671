"""The admins' review page in a real headless Chromium: ranked list with trust plots, a flagged
labeler's page with the confusion matrix and disputed images, and a reinstatement."""
from __future__ import annotations

import os

import pytest

from labeling import answering, services, workflow
from labeling.models import LabelerProfile, QueryBatch
from tests.web.factories import PASSWORD
from tests.web.labeling_support import (annotators, answer_open, digits_project, finish_batch, labeling_dirs,  # noqa: F401
                                        poll_js, staff)  # noqa: F401
from tests.web.test_labeling_browser import browser_page  # noqa: F401
from labeling.models import TrustEvent

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_staff_reviews_a_flagged_labeler_in_the_browser(labeling_dirs, annotators, staff, live_server,
                                                        browser_page, monkeypatch):
    monkeypatch.setattr(workflow, "enqueue", lambda name, *args, countdown=None: None)
    a = annotators[0]
    project = digits_project()
    answer_open(project)
    finish_batch(project, QueryBatch.objects.get(project=project, iteration=0))
    for _ in range(3):  # ann_a takes three images of batch 1 from the queue and labels them wrongly
        asg = answering.next_assignment(user=a, project=project)
        answering.submit_annotation(user=a, assignment_id=asg.pk, label=(asg.item.ground_truth + 1) % 3)
    answer_open(project)  # the rest, truthfully
    finish_batch(project, QueryBatch.objects.get(project=project, iteration=1))
    services.set_labeler_status(user=a, flagged=True)
    page = browser_page
    page.set_viewport_size({"width": 1200, "height": 900})

    page.goto(f"{live_server.url}/accounts/login/?next=/trust/")
    page.fill("#id_username", staff.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#labelers")
    rows = page.locator("tr.labeler-row")
    assert rows.count() == 3
    assert rows.first.get_attribute("data-state") == "flagged" and "ann_a" in rows.first.inner_text()
    assert page.locator("tr.labeler-row svg.trust-chart").count() == 3

    page.click("text=ann_a")
    page.wait_for_selector("#confusion table.confusion")
    assert page.inner_text("#labeler-state") == "flagged"
    assert page.locator("table.confusion tbody tr").count() == 3  # 3 classes
    figures = page.locator("#disputed figure.disputed-item")
    assert figures.count() >= 1
    poll_js(page, "Array.from(document.querySelectorAll('#disputed img'))"
                  ".every(i => i.complete && i.naturalWidth > 0)")
    caption = figures.first.inner_text()
    assert "original:" in caption and "re-annotations:" in caption and "model confidence" in caption
    assert page.locator("#history tbody tr").count() >= 2
    if os.environ.get("ROBUSTAL_SCREENSHOT_DIR"):  # for looking at the page by eye
        page.screenshot(path=os.path.join(os.environ["ROBUSTAL_SCREENSHOT_DIR"], "trust-review.png"), full_page=True)

    for form in ("reinstate", "suspend", "discard"):  # each note field has its own label
        assert page.get_attribute(f"label[for={form}-note]", "for") == f"{form}-note"
    page.fill("#reinstate-note", "checked by hand")
    page.click("#reinstate-form button[type=submit]")
    page.wait_for_selector(".messages li")
    assert f"reinstated by {staff.get_username()}" in page.inner_text(".messages")
    assert page.inner_text("#labeler-state") == "active"
    assert page.locator("#reinstate-form").count() == 0  # nothing to reinstate an active labeler from
    assert not LabelerProfile.objects.get(user=a).is_flagged
    # the staff member's reinstatement (the rules may have reinstated ann_a after an audit too)
    event = TrustEvent.objects.filter(labeler=a, reason="reinstated", actor__isnull=False).get()
    assert event.actor == staff and event.note == "checked by hand"
