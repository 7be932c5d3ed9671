"""Telling staff that the trust rules flagged or suspended a labeler: an email to every staff member
with an address (after the loop step commits), and the banner on the staff pages (the banner's
reads are in :mod:`labeling.staff_selectors`; this module writes the "seen" mark).

The loop step (:mod:`labeling.loop_step`) calls :func:`after_commit` with its plan's trust events;
the mails go out only once the step's transaction has committed, so a step that is rolled back
(or finds its batch processed meanwhile) tells nobody anything. A mail server that is down is
logged and does not fail the loop.
"""
from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from .models import Project, TrustEvent, TrustNoticeSeen

log = logging.getLogger(__name__)

BLOCKING = (TrustEvent.Reason.FLAGGED.value, TrustEvent.Reason.SUSPENDED.value)
WHAT = {
    "flagged": "flagged {name}: they get no new work, and their labels still standing go to other annotators "
               "for a check, until the rules or a staff member decide",
    "suspended": "suspended {name}: they get no work, and their labels that nobody verified no longer count",
}


def after_commit(*, project: Project, events: list[dict]) -> None:
    """Send the staff mail for the plan's flag and suspension events once the transaction commits."""
    blocked = [(int(e["labeler"]), e["reason"], e.get("note") or "") for e in events if e.get("reason") in BLOCKING]
    if blocked:
        transaction.on_commit(lambda pid=project.pk: notify_staff(project_id=pid, blocked=blocked))


def notify_staff(*, project_id: int, blocked: list[tuple[int, str, str]]) -> int:
    """Mail every active staff member with an email address; returns the mails sent (0 on failure)."""
    User = get_user_model()
    staff = list(User.objects.filter(is_staff=True, is_active=True).exclude(email="").order_by("pk"))
    if not staff:
        return 0
    project = Project.objects.filter(pk=project_id).only("name").first()
    names = dict(User.objects.filter(pk__in=[uid for uid, _, _ in blocked]).values_list("pk", "username"))
    where = f' in project "{project.name}"' if project else ""
    lines, who = [], []
    for uid, reason, note in blocked:
        name = names.get(uid, f"user {uid}")
        who.append(name)
        link = settings.ROBUSTAL_SITE_URL + reverse("trust:labeler", args=[uid])
        lines.append(f"- The trust rules {WHAT[reason].format(name=name)}.\n  Why: {note or 'see the review page'}\n"
                     f"  Review: {link}")
    subject = f"[Robust labeling] {', '.join(sorted(set(who)))} {'/'.join(sorted({r for _, r, _ in blocked}))}{where}"
    body = (f"Hello,\n\nthe loop has just done this{where}:\n\n" + "\n\n".join(lines) +
            "\n\nOn the review page you can reinstate, suspend or discard labels. The staff pages list these "
            f"notices until you mark them seen: {settings.ROBUSTAL_SITE_URL}{reverse('home')}\n")
    messages = [mail.EmailMessage(subject=subject, body=body, to=[u.email]) for u in staff]
    try:
        with mail.get_connection(fail_silently=False) as connection:
            sent = connection.send_messages(messages) or 0
    except Exception:  # a mail server that is down must not fail the loop (its step has committed)
        log.exception("could not mail the staff about %s%s", ", ".join(who), where)
        return 0
    log.info("mailed %s staff member(s) about %s%s", sent, ", ".join(who), where)
    return sent


def mark_seen(*, user, until: datetime | None = None) -> TrustNoticeSeen:
    """The staff member has seen the notices up to ``until`` (default now; never in the future, never back)."""
    now = timezone.now()
    until = min(until or now, now)
    mark, created = TrustNoticeSeen.objects.get_or_create(user=user, defaults={"seen_until": until})
    if not created and until > mark.seen_until:
        mark.seen_until = until
        mark.save(update_fields=["seen_until"])
    return mark
