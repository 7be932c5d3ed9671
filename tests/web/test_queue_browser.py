"""Members and the shared queue in Debian's Chromium: staff choose a project's annotators on its
page (on a phone too), start it, and two members labeling at the same time see different images
while the page preloads the next one."""
from __future__ import annotations

import pytest

from labeling import workflow
from labeling.models import Assignment, Project
from tests.web.factories import PASSWORD, AnnotatorFactory, StaffFactory
from tests.web.labeling_support import digits_project, labeling_dirs, poll_js  # noqa: F401
from tests.web.test_pages_browser import DESKTOP, PHONE, chromium, open_annotate, screenshot  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_staff_choose_members_on_a_phone_and_members_share_the_queue(labeling_dirs, live_server, chromium,
                                                                       monkeypatch):
    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)
    alice, bob, carol = (AnnotatorFactory(username=n) for n in ("alice", "bob", "carol"))
    boss = StaffFactory(username="boss")
    project = digits_project(n=30, config={"initial_size": 6, "batch_size": 4, "secured_size": 4}, start=False,
                             members=[])

    page = chromium(**PHONE)
    page.goto(f"{live_server.url}/accounts/login/?next=/labeling/staff/projects/{project.pk}/")
    page.fill("#id_username", boss.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#members-form")
    page.click("#members-form button[type=submit]", trial=True)  # reachable
    page.click("text=Start labeling")
    page.wait_for_selector(".messages li")
    assert "choose its members first" in page.inner_text(".messages")
    page.locator("#members").scroll_into_view_if_needed()
    for name in ("alice", "bob"):
        page.get_by_label(name, exact=True).check()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out on a phone
    screenshot(page, "staff-members-phone.png")
    page.click("#members-form button[type=submit]")
    page.wait_for_selector(".messages li")
    assert "Annotators: alice, bob" in page.inner_text(".messages")
    assert sorted(project.members.values_list("username", flat=True)) == ["alice", "bob"]
    assert page.get_by_label("alice", exact=True).is_checked() and not page.get_by_label("carol", exact=True).is_checked()
    page.click("text=Start labeling")
    page.wait_for_selector(".messages li")
    project.refresh_from_db()
    assert project.state == Project.State.LABELING

    shown = {}
    for user in (alice, bob):
        p = chromium(**DESKTOP)
        open_annotate(p, live_server, project, user.username)
        shown[user.username] = int(p.get_attribute("#annotate", "data-assignment"))
    assert shown["alice"] != shown["bob"]  # one queue, two different images
    held = dict(Assignment.objects.filter(status="open", prefetched=False).values_list("pk", "labeler__username"))
    assert held == {shown["alice"]: "alice", shown["bob"]: "bob"}
    assert Assignment.objects.filter(status="open", prefetched=True).count() == 2  # each page holds one ahead
    assert not Assignment.objects.filter(labeler=carol).exists()  # not a member: handed nothing
