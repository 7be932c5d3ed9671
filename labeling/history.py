"""The loop's side of the trust history: what :mod:`labeling.loop_step` reads into the engine's
state and writes from its plan (trust events, re-annotation rounds, Dawid-Skene estimates).

The review pages and actions on the same rows are the trust app's (``trust/selectors.py``,
``trust/services.py``); the models are in :mod:`labeling.models` under the app label "trust".
"""
from __future__ import annotations

from django.utils import timezone

from .models import (Annotation, Assignment, ConfusionEstimate, Item, Project, QueryBatch, ReannotationRound,
                     TrustEvent)


# --------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------


def annotation_triples(project, *, through: int | None = None) -> list[tuple[int, int, int]]:
    """(item index, labeler id, label) of every answer in ``project`` an admin did not discard
    (``through``: in batches up to that iteration only), batch by batch and in the order given
    within a batch: the engine's order (``learner.loop`` asks a batch's first labels, then its
    rounds' votes, then the next batch's first labels). With ``pipeline`` people answer batch i+1
    before the rounds of batch i close; in the order of the database a vote would count batch
    i+1's first labels as given before it (``learner.trust.vote_history``'s positions)."""
    rows = Annotation.objects.filter(assignment__batch__project=project, discard__isnull=True,
                                     assignment__labeler__isnull=False)
    if through is not None:
        rows = rows.filter(assignment__batch__iteration__lte=through)
    return [(int(i), int(u), int(lab)) for i, u, lab in
            rows.values_list("assignment__item__index", "assignment__labeler_id", "label")
            .order_by("assignment__batch__iteration", "id")]


def pending_rounds(batch) -> list[tuple[int, int, int, list[int], list[int]]]:
    """(item index, original labeler, original label, votes so far, labelers asked) of every
    re-annotation round of ``batch`` still pending, by item index."""
    out = []
    for rnd in (ReannotationRound.objects.filter(batch=batch, outcome=ReannotationRound.Outcome.PENDING)
                .select_related("item").order_by("item__index")):
        asgs = list(rnd.assignments.order_by("id").values_list("labeler_id", "annotation__label"))
        votes = [int(label) for _, label in asgs if label is not None]  # in the order the voters were asked
        asked = [int(u) for u, _ in asgs if u is not None]
        out.append((int(rnd.item.index), int(rnd.original_labeler_id), int(rnd.original_label), votes, asked))
    return out


def round_verdicts(project) -> dict[tuple[int, int], int]:
    """(labeler, item index) -> consensus label of every re-annotation round in ``project`` that
    agreed with, disagreed with or rejected the labeler's first label (the evidence of the trust rules)."""
    return {(int(u), int(i)): int(c) for u, i, c in ReannotationRound.objects.filter(
        project=project, outcome__in=[ReannotationRound.Outcome.AGREED, ReannotationRound.Outcome.DISAGREED,
                                      ReannotationRound.Outcome.REJECTED])
        .values_list("original_labeler_id", "item__index", "consensus_label")}


def reported_pairs(project) -> set[tuple[int, int, int]]:
    """(labeler, true, given) systematic confusions already reported in ``project``."""
    return {(u, t, g) for u, t, g in TrustEvent.objects.filter(project=project, reason=TrustEvent.Reason.SYSTEMATIC)
            .values_list("labeler_id", "consensus_label", "original_label")}


# --------------------------------------------------------------------------------------
# Writes (inside the loop step's transaction)
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
