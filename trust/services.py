"""Writes of the trust app: the history of trust changes, re-annotation rounds, confusion
estimates, and the admins' review actions (reinstate, suspend, discard labels and re-queue).

The loop (``labeling/services.py``) calls :func:`record_events`, :func:`open_round`,
:func:`resolve_rounds` and :func:`save_confusion` inside its own transaction. Review actions
follow the labeling app's locking rule: projects first (``FOR UPDATE``, by id), then rows.
"""
from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from labeling.models import Annotation, Assignment, Item, LabelerProfile, Project, QueryBatch

from .models import ConfusionEstimate, DiscardedAnnotation, ReannotationRound, TrustEvent


class ReviewError(Exception):
    """A review action that cannot be done (shown to the admin)."""


# --------------------------------------------------------------------------------------
# Loop side
# --------------------------------------------------------------------------------------


def record_events(*, project: Project | None, events: list[dict]) -> list[TrustEvent]:
    """Create one TrustEvent per dict (keys: labeler, reason, delta, trust_after and optionally
    item_index, model_confidence, original_label, consensus_label, note)."""
    indices = {e["item_index"] for e in events if e.get("item_index") is not None}
    item_ids = dict(Item.objects.filter(project=project, index__in=indices).values_list("index", "id")) \
        if project is not None and indices else {}
    rows = [TrustEvent(labeler_id=e["labeler"], project=project, item_id=item_ids.get(e.get("item_index")),
                       reason=e["reason"], delta=float(e.get("delta") or 0.0),
                       trust_after=min(max(float(e["trust_after"]), 0.0), 1.0),
                       model_confidence=e.get("model_confidence"), original_label=e.get("original_label"),
                       consensus_label=e.get("consensus_label"), note=e.get("note", ""))
            for e in events]
    return TrustEvent.objects.bulk_create(rows)


def open_round(*, batch: QueryBatch, item: Item, original_labeler_id: int, assignments: list[Assignment]):
    """Record a re-annotation round when its assignments are created (idempotent per batch and item)."""
    original = (Annotation.objects.filter(assignment__item=item, assignment__kind=Assignment.Kind.FIRST_LABEL,
                                          assignment__labeler_id=original_labeler_id, discard__isnull=True)
                .order_by("-created_at", "-id").first())
    rnd, _ = ReannotationRound.objects.get_or_create(
        batch=batch, item=item,
        defaults={"project_id": batch.project_id, "original_labeler_id": original_labeler_id,
                  "original_annotation": original, "original_label": original.label if original else -1})
    if assignments:
        rnd.assignments.add(*assignments)
    return rnd


def resolve_rounds(*, batch: QueryBatch, rounds: list[dict]) -> int:
    """Close the batch's pending rounds with their outcome, consensus and the model's confidence."""
    by_index = {r["item_index"]: r for r in rounds}
    now, n = timezone.now(), 0
    for rnd in (ReannotationRound.objects.select_for_update().filter(batch=batch, outcome="pending")
                .select_related("item")):
        r = by_index.get(rnd.item.index)
        if r is None:
            continue
        rnd.outcome, rnd.consensus_label = r["outcome"], r.get("consensus_label")
        rnd.prob_original, rnd.prob_consensus, rnd.resolved_at = r.get("prob_original"), r.get("prob_consensus"), now
        rnd.save(update_fields=["outcome", "consensus_label", "prob_original", "prob_consensus", "resolved_at"])
        n += 1
    return n


def save_confusion(*, project: Project, estimates: dict[int, dict]) -> None:
    """Keep the latest Dawid-Skene estimate of each labeler in ``project``."""
    for uid, est in estimates.items():
        ConfusionEstimate.objects.update_or_create(
            project=project, labeler_id=uid,
            defaults={"matrix": est["matrix"], "counts": est["counts"], "n_labels": est["n_labels"],
                      "suspicious_pairs": est["pairs"]})


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
    labeled (not frozen by the loop task), given to another eligible labeler; otherwise it simply
    returns to the unlabeled pool, where the query strategy can pick it again.
    """
    from labeling import selectors as labeling_selectors
    from learner import live

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
            eligible = [u for u in labeling_selectors.eligible_labelers() if u != labeler.pk]
            who = live.spread(len(todo), eligible, labeling_selectors.open_load(batch), seed=event.pk)
            Assignment.objects.bulk_create([
                Assignment(item=i, batch=batch, labeler_id=w, kind=Assignment.Kind.FIRST_LABEL,
                           status=Assignment.Status.OPEN if w is not None else Assignment.Status.PAUSED)
                for i, w in zip(todo, who)])
            requeued += len(todo)
        summary = (f"{len(anns)} label(s) since {since:%Y-%m-%d %H:%M} discarded; {requeued} item(s) re-queued "
                   f"in open batches, {returned} returned to the pool")
        event.note = f"{summary}. {note}".strip() if note else summary
        event.save(update_fields=["note"])
    return event
