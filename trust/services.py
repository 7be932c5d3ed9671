"""Writes of the trust app: the admins' review actions (reinstate, suspend, discard labels and
re-queue), each recorded in the trust history. The loop's own history writes are
:mod:`labeling.history`. Review actions follow the labeling app's locking rule: projects first
(``FOR UPDATE``, by id), then rows.
"""
from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from labeling.models import (Annotation, Assignment, DiscardedAnnotation, Item, LabelerProfile, Project, QueryBatch,
                             TrustEvent)



class ReviewError(Exception):
    """A review action that cannot be done (shown to the admin)."""


# --------------------------------------------------------------------------------------
# Admin review
# --------------------------------------------------------------------------------------


def _locked_profile(user) -> LabelerProfile:
    profile, _ = LabelerProfile.objects.get_or_create(user=user)
    return LabelerProfile.objects.select_for_update().get(pk=profile.pk)


def reinstate(*, labeler, actor, note: str = "", trust_floor: float | None = None) -> TrustEvent:
    """Clear flagged and suspended. Trust (the weight of the labeler's labels) is lifted to
    ``trust_floor`` (default 0.7) when below it: an admin who reinstates vouches for the labeler,
    and the labels given so far no longer count towards a new flag (``LabelerProfile.cleared``)."""
    floor = 0.7 if trust_floor is None else float(trust_floor)
    if not 0.0 <= floor <= 1.0:
        raise ReviewError("trust floor must lie in [0, 1]")
    with transaction.atomic():
        profile = _locked_profile(labeler)
        if not (profile.is_flagged or profile.is_suspended):
            raise ReviewError(f"{labeler.get_username()} is neither flagged nor suspended")
        before = profile.trust
        profile.trust = max(profile.trust, floor)
        profile.is_flagged = profile.is_suspended = False
        given = (Annotation.objects.filter(assignment__labeler=labeler, assignment__kind=Assignment.Kind.FIRST_LABEL,
                                           discard__isnull=True)
                 .values("assignment__batch__project_id").annotate(n=Count("id")))
        profile.cleared = {str(r["assignment__batch__project_id"]): r["n"] for r in given}
        profile.save()
        return TrustEvent.objects.create(labeler=labeler, reason=TrustEvent.Reason.REINSTATED,
                                         delta=profile.trust - before, trust_after=profile.trust, actor=actor,
                                         note=note)


def suspend(*, labeler, actor, note: str = "") -> TrustEvent:
    """Suspend: no more work, labels excluded from training; open work goes to others."""
    from labeling import services as labeling_services

    with transaction.atomic():
        profile = _locked_profile(labeler)
        if profile.is_suspended:
            raise ReviewError(f"{labeler.get_username()} is already suspended")
        profile = labeling_services.set_labeler_status(user=labeler, suspended=True)
        return TrustEvent.objects.create(labeler=labeler, reason=TrustEvent.Reason.SUSPENDED_BY_ADMIN, delta=0.0,
                                         trust_after=profile.trust, actor=actor, note=note)


def discard_labels_since(*, labeler, since: datetime, actor, note: str = "") -> TrustEvent:
    """Discard every answer ``labeler`` gave at or after ``since`` and re-queue the items that lose
    their label.

    Discarded answers stay in the database (and in the budget: they were bought) but the loop no
    longer reads them. An item whose first label is discarded and that has no other first label
    gets a new first-label assignment in its project's open batch when that batch is still being
    labeled (not frozen by the loop task), queued for the other members; otherwise it simply
    returns to the unlabeled pool, where the query strategy can pick it again.
    """
    from labeling import selectors as labeling_selectors

    if since > timezone.now():
        raise ReviewError("the date lies in the future")
    candidates = list(Annotation.objects.filter(assignment__labeler=labeler, created_at__gte=since,
                                                discard__isnull=True)
                      .values_list("id", "assignment__batch__project_id"))
    if not candidates:
        raise ReviewError(f"{labeler.get_username()} gave no label since {since:%Y-%m-%d %H:%M}")
    project_ids = sorted({p for _, p in candidates})
    with transaction.atomic():
        projects = {p.pk: p for p in Project.objects.select_for_update().filter(pk__in=project_ids).order_by("pk")}
        profile = _locked_profile(labeler)
        # no outer join under FOR UPDATE (PostgreSQL refuses it): "not yet discarded" as a subquery
        anns = list(Annotation.objects.select_for_update(of=("self",))
                    .filter(pk__in=[a for a, _ in candidates])
                    .exclude(pk__in=DiscardedAnnotation.objects.values("annotation_id"))
                    .select_related("assignment", "assignment__item"))
        event = TrustEvent.objects.create(labeler=labeler, reason=TrustEvent.Reason.DISCARDED, delta=0.0,
                                          trust_after=profile.trust, actor=actor, note=note)
        DiscardedAnnotation.objects.bulk_create([DiscardedAnnotation(annotation=a, event=event) for a in anns])
        lost: dict[int, list[Item]] = {}
        for a in anns:
            item = a.assignment.item
            if a.assignment.kind != Assignment.Kind.FIRST_LABEL or item.is_secured:
                continue
            still = Annotation.objects.filter(assignment__item=item, assignment__kind=Assignment.Kind.FIRST_LABEL,
                                              discard__isnull=True).exists()
            if not still:
                lost.setdefault(item.project_id, []).append(item)
        requeued = returned = 0
        for pid, items in sorted(lost.items()):
            project = projects[pid]
            batch = labeling_selectors.open_batch(project)
            usable = (project.state == Project.State.LABELING and batch is not None
                      and batch.phase == QueryBatch.Phase.LABELING and batch.frozen_at is None)
            if not usable:
                returned += len(items)
                continue
            present = set(Assignment.objects.filter(batch=batch, kind=Assignment.Kind.FIRST_LABEL)
                          .values_list("item_id", flat=True))
            todo = sorted({i.pk: i for i in items if i.pk not in present}.values(), key=lambda i: i.index)
            returned += len(items) - len(todo)
            # queued for the other members (original_labeler: the discarded labeler may not take it)
            Assignment.objects.bulk_create([
                Assignment(item=i, batch=batch, original_labeler=labeler, kind=Assignment.Kind.FIRST_LABEL,
                           status=Assignment.Status.QUEUED) for i in todo])
            requeued += len(todo)
        summary = (f"{len(anns)} label(s) since {since:%Y-%m-%d %H:%M} discarded; {requeued} item(s) re-queued "
                   f"in open batches, {returned} returned to the pool")
        event.note = f"{summary}. {note}".strip() if note else summary
        event.save(update_fields=["note"])
    return event
