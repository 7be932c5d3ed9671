"""Reads of the trust app (the staff review pages). No writes here."""
from __future__ import annotations

from collections import defaultdict

from django.contrib.auth import get_user_model
from django.db.models import Q

from labeling.models import (ANNOTATORS_GROUP, Annotation, Assignment, ConfusionEstimate, LabelerProfile,
                             ReannotationRound, TrustEvent)



User = get_user_model()


def labeler_rows() -> list[dict]:
    """Every annotator (or anyone with a trust history): suspended and flagged first, then by trust."""
    users = (User.objects.filter(Q(groups__name=ANNOTATORS_GROUP) | Q(trust_events__isnull=False)).distinct()
             .select_related("labeler_profile"))
    series = trust_series_many([u.pk for u in users])
    rows = []
    for u in users:
        p = getattr(u, "labeler_profile", None)
        trust = p.trust if p else 1.0
        state = "suspended" if p and p.is_suspended else "flagged" if p and p.is_flagged else "active"
        rows.append({"user": u, "profile": p, "trust": trust, "state": state, "series": series.get(u.pk, []),
                     "labels_given": p.labels_given if p else 0, "disagreements": p.disagreements if p else 0,
                     "alerts": p.alerts if p else 0})
    order = {"flagged": 0, "suspended": 1, "active": 2}
    rows.sort(key=lambda r: (order[r["state"]], r["trust"], r["user"].username))
    return rows


def trust_series_many(user_ids) -> dict[int, list[tuple]]:
    """{user: [(time, trust after), ...]} from the trust history, oldest first."""
    out: dict[int, list[tuple]] = defaultdict(list)
    for uid, when, value in (TrustEvent.objects.filter(labeler_id__in=list(user_ids))
                             .order_by("created_at", "id").values_list("labeler_id", "created_at", "trust_after")):
        out[uid].append((when, value))
    return out


def labeler_state(user) -> dict:
    p = LabelerProfile.objects.filter(user=user).first()
    state = "suspended" if p and p.is_suspended else "flagged" if p and p.is_flagged else "active"
    return {"profile": p, "state": state, "trust": p.trust if p else 1.0}


def events_for(user, limit: int = 200) -> list[TrustEvent]:
    return list(TrustEvent.objects.filter(labeler=user).select_related("project", "item", "actor")
                .order_by("-created_at", "-id")[:limit])


def confusion_for(user) -> list[ConfusionEstimate]:
    return list(ConfusionEstimate.objects.filter(labeler=user).select_related("project").order_by("project__name"))


def disputed_rounds(user, limit: int = 100) -> list[dict]:
    """Rounds on this labeler's labels that did not simply confirm them, newest first, with the votes."""
    rounds = list(ReannotationRound.objects.filter(original_labeler=user)
                  .exclude(outcome=ReannotationRound.Outcome.AGREED)
                  .select_related("project", "item").order_by("-opened_at", "-id")[:limit])
    votes: dict[int, list] = defaultdict(list)
    through = ReannotationRound.assignments.through
    for round_id, username, label in (through.objects.filter(reannotationround__in=rounds)
                                      .values_list("reannotationround_id", "assignment__labeler__username",
                                                   "assignment__annotation__label")
                                      .order_by("assignment_id")):
        votes[round_id].append((username or "(unassigned)", label))
    out = []
    for r in rounds:
        names = r.project.classes

        def name(k):
            return names[k] if k is not None and 0 <= k < len(names) else "—"
        out.append({"round": r, "original": name(r.original_label), "consensus": name(r.consensus_label),
                    "votes": [(u, name(lab) if lab is not None else "pending") for u, lab in votes[r.pk]]})
    return out


def pending_round_count() -> int:
    return ReannotationRound.objects.filter(outcome=ReannotationRound.Outcome.PENDING).count()


def labeler_annotations_since(user, since):
    """This labeler's answers given at or after ``since`` and not yet discarded."""
    return (Annotation.objects.filter(assignment__labeler=user, created_at__gte=since, discard__isnull=True)
            .select_related("assignment", "assignment__item", "assignment__batch"))


FIRST_LABEL = Assignment.Kind.FIRST_LABEL


def review_suggestion(user) -> tuple[str, str] | None:
    """The rule-based suggestion for a flagged or suspended labeler (None when active)."""
    from learner.trust import TrustPolicy, suggest_review

    p = LabelerProfile.objects.filter(user=user).first()
    if p is None or not (p.is_flagged or p.is_suspended):
        return None
    pairs = []
    for est in ConfusionEstimate.objects.filter(labeler=user).select_related("project"):
        names = est.project.classes
        pairs += [(names[a], names[b]) for a, b in est.suspicious_pairs]
    verdicts = dict(ReannotationRound.objects.filter(
        original_labeler=user, outcome__in=[ReannotationRound.Outcome.AGREED, ReannotationRound.Outcome.DISAGREED,
                                            ReannotationRound.Outcome.REJECTED])
        .values_list("item_id", "consensus_label"))
    firsts = (Annotation.objects.filter(assignment__labeler=user, assignment__kind=Assignment.Kind.FIRST_LABEL,
                                        discard__isnull=True).order_by("id")
              .values_list("assignment__item_id", "label", "assignment__batch__project__classes"))
    history = [(label, verdicts.get(item)) for item, label, _ in firsts]
    n_classes = max((len(c) for _, _, c in firsts), default=2)
    return suggest_review(history, n_classes, pairs, TrustPolicy(), votes=_votes_of(user))


def _votes_of(user) -> list[tuple[int, int | None]]:
    """(vote, verdict or None) of each re-annotation vote of ``user``, judged by the item's other
    answers as the loop judges them (:func:`learner.trust.vote_history`)."""
    from learner.trust import vote_history

    voted = Annotation.objects.filter(assignment__labeler=user, assignment__kind=Assignment.Kind.REANNOTATION,
                                      discard__isnull=True).values("assignment__item_id")
    rows = list(Annotation.objects.filter(assignment__item_id__in=voted, discard__isnull=True,
                                          assignment__labeler__isnull=False)
                .exclude(assignment__kind=Assignment.Kind.SECURED).order_by("id")
                .values_list("assignment__item_id", "assignment__labeler_id", "label", "assignment__kind"))
    firsts = {(item, uid) for item, uid, _, kind in rows if kind == Assignment.Kind.FIRST_LABEL}
    answers = [(item, uid, label) for item, uid, label, _ in rows]
    return [(g, c) for g, c, _ in vote_history(answers, firsts).get(user.pk, [])]
