"""Reads for staff (the staff API): project summaries, batches and per-annotator progress. No writes."""
from __future__ import annotations

import statistics
from collections import defaultdict

from django.db.models import Count, Max, Q, QuerySet

from . import selectors
from .models import Annotation, Assignment, LabelerProfile, Project, QueryBatch

_FINISHED = (Assignment.Status.DONE, Assignment.Status.SKIPPED)


def project_list() -> QuerySet:
    """Every project with its number of images (``n_items``), newest first."""
    return Project.objects.annotate(n_items=Count("items")).order_by("-created_at")


def _batch_progress(batch: QueryBatch | None) -> dict | None:
    if batch is None:
        return None
    counts = batch.assignments.aggregate(total=Count("id"), done=Count("id", filter=Q(status__in=_FINISHED)))
    return {"id": batch.pk, "iteration": batch.iteration, "phase": batch.phase, "strategy": batch.strategy,
            "done": counts["done"], "total": counts["total"]}


def project_summary(project: Project) -> dict:
    """Everything a staff client needs to follow one project (settings, state, counts, the open batch)."""
    return {
        "id": project.pk, "name": project.name, "description": project.description, "classes": project.classes,
        "config": project.config, "state": project.state, "paused": project.is_paused,
        "paused_at": project.paused_at, "iteration": project.iteration, "stop_reason": project.stop_reason,
        "loop_error": project.loop_error, "n_items": selectors.item_count(project),
        "n_ground_truth": project.items.filter(ground_truth__isnull=False).count(),
        "labels_bought": selectors.labels_bought(project),
        "open_batch": _batch_progress(selectors.open_batch(project)),
        "created_at": project.created_at, "updated_at": project.updated_at,
    }


def batch_rows(project: Project) -> list[dict]:
    """Every batch of the project, oldest first, with its assignments counted by status and kind."""
    S, K = Assignment.Status, Assignment.Kind
    rows = (QueryBatch.objects.filter(project=project).order_by("iteration").annotate(
        n_assignments=Count("assignments"),
        n_open=Count("assignments", filter=Q(assignments__status=S.OPEN)),
        n_waiting=Count("assignments", filter=Q(assignments__labeler__isnull=True)),  # nobody holds it yet
        n_done=Count("assignments", filter=Q(assignments__status=S.DONE)),
        n_skipped=Count("assignments", filter=Q(assignments__status=S.SKIPPED)),
        n_first_label=Count("assignments", filter=Q(assignments__kind=K.FIRST_LABEL)),
        n_reannotation=Count("assignments", filter=Q(assignments__kind=K.REANNOTATION)),
        n_secured=Count("assignments", filter=Q(assignments__kind=K.SECURED)),
    ))
    return [{
        "id": b.pk, "iteration": b.iteration, "strategy": b.strategy, "phase": b.phase,
        "opened_at": b.opened_at, "frozen_at": b.frozen_at, "closed_at": b.closed_at,
        "assignments": {"total": b.n_assignments, "open": b.n_open, "waiting": b.n_waiting, "done": b.n_done,
                        "skipped": b.n_skipped},
        "kinds": {"first_label": b.n_first_label, "reannotation": b.n_reannotation, "secured": b.n_secured},
    } for b in rows]


def annotator_progress(project: Project) -> list[dict]:
    """One row per person who has had work in the project: progress, speed, agreement and standing.

    ``agreement``: the share of their labels equal to the item's *verified* label (a secured
    label, or the consensus of a re-annotation round), over the items that have one; their own
    unverified first labels do not count. ``ground_truth_accuracy``: the share equal to the
    imported ground truth, over the items that have one. Both are None without such items.
    """
    batch = selectors.open_batch(project)
    counts = (Assignment.objects.filter(batch__project=project, labeler__isnull=False).values("labeler_id")
              .annotate(assigned=Count("id"), done=Count("id", filter=Q(status=Assignment.Status.DONE)),
                        skipped=Count("id", filter=Q(status=Assignment.Status.SKIPPED)),
                        open=Count("id", filter=Q(status=Assignment.Status.OPEN)),
                        batch_assigned=Count("id", filter=Q(batch=batch)),
                        batch_finished=Count("id", filter=Q(batch=batch, status__in=_FINISHED)),
                        last_answer_at=Max("completed_at")))
    by_user = {row["labeler_id"]: row for row in counts}
    if not by_user:
        return []
    pool = selectors.pool_labels(project)
    seconds: dict[int, list[float]] = defaultdict(list)
    agree: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # user -> [matches, comparable]
    truth: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for labeler, index, label, secs in (Annotation.objects.filter(assignment__batch__project=project,
                                                                   discard__isnull=True)
                                        .values_list("assignment__labeler_id", "assignment__item__index", "label",
                                                     "seconds")):
        if secs is not None:
            seconds[labeler].append(float(secs))
        if pool.secured[index]:
            reference = int(pool.secured_labels[index])
        elif pool.labels[index] >= 0 and pool.labeler_of[index] < 0:  # verified by a re-annotation round
            reference = int(pool.labels[index])
        else:
            reference = -1
        if reference >= 0:
            agree[labeler][0] += int(label == reference)
            agree[labeler][1] += 1
        if pool.ground_truth[index] >= 0:
            truth[labeler][0] += int(label == pool.ground_truth[index])
            truth[labeler][1] += 1
    profiles = {p.user_id: p for p in LabelerProfile.objects.filter(user_id__in=by_user)}
    names = dict(selectors.User.objects.filter(pk__in=by_user).values_list("pk", selectors.User.USERNAME_FIELD))
    rows = []
    for user_id, c in sorted(by_user.items(), key=lambda kv: names.get(kv[0], "")):
        profile = profiles.get(user_id)
        secs = seconds.get(user_id, [])
        a, t = agree.get(user_id, (0, 0)), truth.get(user_id, (0, 0))
        rows.append({
            "user_id": user_id, "username": names.get(user_id, ""),
            "assigned": c["assigned"], "done": c["done"], "skipped": c["skipped"], "open": c["open"],
            "batch_assigned": c["batch_assigned"], "batch_finished": c["batch_finished"],
            "last_answer_at": c["last_answer_at"],
            "median_seconds": statistics.median(secs) if secs else None,
            "agreement": a[0] / a[1] if a[1] else None, "agreement_n": a[1],
            "ground_truth_accuracy": t[0] / t[1] if t[1] else None, "ground_truth_n": t[1],
            "trust": float(profile.trust) if profile else 1.0,
            "standing": ("suspended" if profile and profile.is_suspended
                         else "flagged" if profile and profile.is_flagged else "active"),
        })
    return rows
