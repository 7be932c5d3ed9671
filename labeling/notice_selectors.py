"""Reads of the staff notices: labelers the trust rules flagged or suspended since a staff member
last looked (the banner of the staff home and project pages). No writes here; the "seen" mark and
the mails are :mod:`labeling.notifications`."""
from __future__ import annotations

from django.db.models import QuerySet

from .models import Project, TrustEvent, TrustNoticeSeen

BLOCKING = (TrustEvent.Reason.FLAGGED, TrustEvent.Reason.SUSPENDED)


def _standing(profile) -> str:
    if profile is None:
        return "active"
    return "suspended" if profile.is_suspended else "flagged" if profile.is_flagged else "active"


def trust_notices(user, *, project: Project | None = None, limit: int = 20) -> dict:
    """Labelers flagged or suspended by the rules since ``user`` last marked the notices seen
    (all such events when never), newest first, one row per labeler with their state now.

    ``latest`` is the newest event's time: marking seen up to it leaves a later event listed.
    Two queries whatever the number of events.
    """
    seen = TrustNoticeSeen.objects.filter(user=user).values_list("seen_until", flat=True).first()
    qs: QuerySet = TrustEvent.objects.filter(reason__in=BLOCKING)
    if seen is not None:
        qs = qs.filter(created_at__gt=seen)
    if project is not None:
        qs = qs.filter(project=project)
    events = list(qs.select_related("labeler", "labeler__labeler_profile", "project")
                  .order_by("-created_at", "-id")[:1000])
    newest: dict[int, TrustEvent] = {}
    for e in events:
        newest.setdefault(e.labeler_id, e)
    rows = [{"labeler": e.labeler, "reason": e.reason, "when": e.created_at, "project": e.project, "note": e.note,
             "state": _standing(getattr(e.labeler, "labeler_profile", None))}
            for e in list(newest.values())[:limit]]
    return {"rows": rows, "more": max(0, len(newest) - limit), "latest": events[0].created_at if events else None,
            "seen": seen}
