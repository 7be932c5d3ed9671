"""Reads of the labeling app (HackSoft-style selectors). No writes here."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, F, Q, QuerySet

from learner.engine import secured_label

from .db import instances, prepared_cursor
from .models import (ANNOTATORS_GROUP, TAKES_ANSWERS, Annotation, Assignment, Item, IterationMetric, LabelerProfile,
                     Project, ProjectMember, QueryBatch, ReannotationRound)

User = get_user_model()


# --------------------------------------------------------------------------------------
# Who may label
# --------------------------------------------------------------------------------------


def is_annotator(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active
                and user.groups.filter(name=ANNOTATORS_GROUP).exists())


def annotators() -> QuerySet:
    return User.objects.filter(groups__name=ANNOTATORS_GROUP, is_active=True).distinct()


def member_ids(project: Project) -> list[int]:
    """The project's members who can work (active annotators), by id: the loop's crowd."""
    return list(annotators().filter(project_memberships__project=project).order_by("id").values_list("id", flat=True))


def eligible_labelers(project: Project) -> list[int]:
    """Members who may get new work in ``project``: active, not suspended, not flagged.

    When every member is flagged, flagged ones are used rather than none (as the loop engine
    does); suspended annotators never get work.
    """
    base = annotators().filter(project_memberships__project=project).exclude(labeler_profile__is_suspended=True)
    ids = list(base.exclude(labeler_profile__is_flagged=True).order_by("id").values_list("id", flat=True))
    return ids or list(base.order_by("id").values_list("id", flat=True))


def may_claim(user, project: Project) -> bool:
    """Whether ``user`` may claim new work in ``project`` (:func:`eligible_labelers`, for one user;
    the claim statement of :mod:`labeling.queue` checks the same in SQL)."""
    return user.pk in eligible_labelers(project)


def labeler_standing(user) -> str:
    """"active", "flagged" (paused while others check their labels) or "suspended"."""
    row = LabelerProfile.objects.filter(user=user).values_list("is_suspended", "is_flagged").first()
    if row is None:
        return "active"
    return "suspended" if row[0] else "flagged" if row[1] else "active"


def labeler_weights() -> dict[int, float]:
    return {p.user_id: p.weight for p in LabelerProfile.objects.all()}


def suspended_ids() -> set[int]:
    return set(LabelerProfile.objects.filter(is_suspended=True).values_list("user_id", flat=True))


# --------------------------------------------------------------------------------------
# Projects, batches, assignments
# --------------------------------------------------------------------------------------


def project_list_for(user) -> QuerySet:
    """Staff: every project. Annotators: projects they are members of or have had work in."""
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(Q(memberships__user=user) | Q(batches__assignments__labeler=user)).distinct()


def project_visible_to(user, project: Project) -> bool:
    return (user.is_staff or ProjectMember.objects.filter(project=project, user=user).exists()
            or Assignment.objects.filter(batch__project=project, labeler=user).exists())


def open_batch(project: Project) -> QueryBatch | None:
    """The oldest open batch: the one the loop closes next (with ``pipeline`` a younger one is
    being labeled at the same time: :func:`open_batches`)."""
    return project.batches.filter(closed_at__isnull=True).order_by("iteration").first()


def open_batches(project: Project) -> list[QueryBatch]:
    """Every open batch, oldest first (one, or two with ``pipeline``: the batch the loop closes
    next and the one people label meanwhile)."""
    return list(project.batches.filter(closed_at__isnull=True).order_by("iteration"))


def labelable_batch(project: Project) -> QueryBatch | None:
    """The oldest open batch that takes answers (not frozen by the loop task), else the oldest open one."""
    batches = open_batches(project)
    return next((b for b in batches if b.frozen_at is None), batches[0] if batches else None)


def batch_is_complete(batch: QueryBatch) -> bool:
    """True when no assignment of the batch waits in the queue or is claimed."""
    return not batch.assignments.filter(status__in=[Assignment.Status.QUEUED, Assignment.Status.OPEN]).exists()


# --------------------------------------------------------------------------------------
# The work queue (writes: labeling.queue)
# --------------------------------------------------------------------------------------


def claimable_projects(user) -> list[Project]:
    """Projects whose work ``user`` may be handed now: member, labeling, not paused by staff.
    (Hand-written: ``next`` without a project runs it on every answer.)"""
    q = connection.ops.quote_name
    sql = (f"SELECT p.* FROM {q(Project._meta.db_table)} p JOIN {q(ProjectMember._meta.db_table)} m "
           "ON m.project_id = p.id WHERE m.user_id = %s AND p.state IN (%s, %s) AND p.paused_at IS NULL ORDER BY p.id")
    # "updating" too: with pipeline a younger batch is labeled while the model updates
    with prepared_cursor() as cursor:
        cursor.execute(sql, [user.pk, *TAKES_ANSWERS])
        return instances(Project, cursor)


def item_holders(assignment: Assignment) -> set[int]:
    """Everyone who has (or had: answered, skipped) a slot of the same item in the same batch."""
    return set(Assignment.objects.filter(item=assignment.item_id, batch=assignment.batch_id, labeler__isnull=False)
               .values_list("labeler_id", flat=True))


def work_waiting_for_others(user, project: Project) -> dict[str, int]:
    """Queued slots of the project's open batches (frozen ones aside), and how many of them are
    checks of ``user``'s own labels: what someone who got no work is waiting for (the no-work
    message only; one aggregate query)."""
    return Assignment.objects.filter(
        batch__project_id=project.pk, batch__closed_at__isnull=True, batch__frozen_at__isnull=True,
        status=Assignment.Status.QUEUED).aggregate(
        queued=Count("pk"), checks_of_mine=Count("pk", filter=Q(original_labeler_id=user.pk)))


def assignment_for_user(user, assignment_id: int) -> Assignment | None:
    """The assignment if it belongs to ``user`` (None otherwise: callers answer 404)."""
    return (Assignment.objects.filter(pk=assignment_id, labeler=user)
            .select_related("batch", "batch__project", "item").first())


def progress_for(user, project: Project, *, batch_id: int | None = None, bought_before: int | None = None) -> dict:
    """The open batch's progress and the project's budget (nobody's share: the queue is shared).

    One indexed count per call (``GROUP BY status`` on the batch's (batch, status) index): the
    batch's items done and still to do, and the labels bought so far (those before the batch,
    stored when it opened, plus the batch's own answers).
    """
    budget = (project.config or {}).get("budget")
    if batch_id is None:  # the caller may know the open batch (and its bought_before) already
        batch = labelable_batch(project)
        if batch is None:
            return {"batch_done": 0, "batch_total": 0, "bought": labels_bought(project), "budget": budget}
        batch_id, bought_before = batch.pk, batch.bought_before
    with connection.cursor() as cursor:  # hand-written: on every ``next``
        cursor.execute(f"SELECT status, count(*) FROM {connection.ops.quote_name(Assignment._meta.db_table)} "
                       "WHERE batch_id = %s GROUP BY status", [batch_id])
        counts = dict(cursor.fetchall())
    done = counts.get(Assignment.Status.DONE, 0)
    total = done + counts.get(Assignment.Status.OPEN, 0) + counts.get(Assignment.Status.QUEUED, 0)
    bought = bought_before + done if bought_before is not None else labels_bought(project)
    return {"batch_done": done, "batch_total": total, "bought": bought, "budget": budget}


def labels_bought(project: Project, *, through: int | None = None) -> int:
    """Every label paid for: annotations of every kind plus admin-verified secured labels.

    ``through``: only the answers of batches up to that iteration (the loop's state of a batch
    leaves out the younger batch people label meanwhile with ``pipeline``)."""
    answered = Annotation.objects.filter(assignment__batch__project=project)
    if through is not None:
        answered = answered.filter(assignment__batch__iteration__lte=through)
    answered = answered.count()
    admin = project.items.filter(is_secured=True, ground_truth__isnull=False).count()
    return answered + admin


def metric_history(project: Project) -> list[IterationMetric]:
    return list(project.metrics.order_by("iteration"))


def last_undoable(user, *, since) -> Assignment | None:
    """The user's most recently completed assignment after ``since`` (answer or skip)."""
    return (Assignment.objects.filter(labeler=user, completed_at__gte=since,
                                      status__in=[Assignment.Status.DONE, Assignment.Status.SKIPPED])
            .select_related("batch", "batch__project").order_by("-completed_at", "-id").first())


# --------------------------------------------------------------------------------------
# Label state of a project's pool (what the loop trains on)
# --------------------------------------------------------------------------------------


@dataclass
class PoolLabels:
    """The resolved label state of every item (index = item.index).

    ``labels`` -1: unlabeled (or discarded, or only labeled by a suspended labeler);
    ``labeler_of`` -1: verified by re-annotation (no single labeler's word) or unlabeled.
    A first label under a re-annotation round still pending stands as it is.
    """

    n: int
    labels: np.ndarray
    weights: np.ndarray
    labeler_of: np.ndarray
    discarded: np.ndarray
    secured: np.ndarray  # secured items whose verified label is known (used by the check)
    secured_labels: np.ndarray
    ground_truth: np.ndarray
    item_ids: np.ndarray
    secured_items: np.ndarray  # every item of the secured set (never queried, never trained on)
    first_label: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # index -> (label, labeler, batch iteration)
    # index -> (original labeler, original label, labelers whose voice carried the verified label)
    support: dict[int, tuple[int, int, set[int]]] = field(default_factory=dict)

    @property
    def labeled(self) -> np.ndarray:
        return self.labels >= 0

    @property
    def blocked(self) -> np.ndarray:
        """Items a strategy may not pick: labeled, secured or discarded."""
        return self.labeled | self.secured_items | self.discarded


def pool_labels(project: Project, *, through: int | None = None) -> PoolLabels:
    """The label state of ``project``'s pool; ``through``: from the answers of batches up to that
    iteration only (:func:`labels_bought`)."""
    items = list(project.items.order_by("index").values_list("index", "id", "is_secured", "ground_truth"))
    n = len(items)
    if n and items[-1][0] != n - 1:
        raise ValueError(f"project {project.pk}: item indices are not dense 0..{n - 1}")
    item_ids = np.array([i[1] for i in items], dtype=np.int64)
    ground_truth = np.array([-1 if i[3] is None else i[3] for i in items], dtype=np.int64)
    secured = np.array([i[2] for i in items], dtype=bool)
    suspended = suspended_ids()
    weights_of = labeler_weights()

    firsts: dict[int, list] = defaultdict(list)
    secured_votes: dict[int, list[int]] = defaultdict(list)
    rows = Annotation.objects.filter(assignment__batch__project=project, discard__isnull=True)  # admin-discarded
    if through is not None:
        rows = rows.filter(assignment__batch__iteration__lte=through)
    rows = (rows.values_list("id", "assignment__item__index", "assignment__kind", "assignment__labeler_id",
                             "label", "assignment__batch__iteration")
            .order_by("created_at", "id"))
    for annotation_id, index, kind, labeler, label, iteration in rows:
        if kind == Assignment.Kind.FIRST_LABEL:
            firsts[index].append((label, labeler, iteration, annotation_id))
        elif kind == Assignment.Kind.SECURED and labeler not in suspended:
            secured_votes[index].append(label)
    # the outcome of each resolved re-annotation round, by the first label it reviewed (the latest
    # round wins), and who carried its consensus: the original labeler when the round agreed, and
    # the voters who gave the consensus (a suspended one's voice is withdrawn below, as
    # learner.engine.withdraw_support does when the engine suspends someone)
    outcomes, carried = {}, defaultdict(set)
    for rnd, a, o, c, original in (ReannotationRound.objects.filter(project=project)
                                   .exclude(outcome=ReannotationRound.Outcome.PENDING).order_by("id")
                                   .values_list("id", "original_annotation_id", "outcome", "consensus_label",
                                                "original_labeler_id")):
        outcomes[a] = (o, c, rnd)
        if o == ReannotationRound.Outcome.AGREED:
            carried[rnd].add(original)
    for rnd, who in (ReannotationRound.assignments.through.objects
                     .filter(reannotationround__project=project,
                             assignment__annotation__label=F("reannotationround__consensus_label"),
                             assignment__annotation__discard__isnull=True)
                     .exclude(reannotationround__outcome=ReannotationRound.Outcome.PENDING)
                     .values_list("reannotationround_id", "assignment__labeler_id")):
        carried[rnd].add(who)

    labels = np.full(n, -1, dtype=np.int64)
    weights = np.zeros(n, dtype=np.float64)
    labeler_of = np.full(n, -1, dtype=np.int64)
    discarded = np.zeros(n, dtype=bool)
    first_label: dict[int, tuple[int, int, int]] = {}
    support: dict[int, tuple[int, int, set[int]]] = {}
    for index, answers in firsts.items():
        label, labeler, iteration, annotation_id = answers[-1]
        first_label[index] = (label, labeler, iteration)
        outcome, consensus, rnd = outcomes.get(annotation_id, (None, None, None))
        if outcome in (ReannotationRound.Outcome.INCONSISTENT, ReannotationRound.Outcome.REJECTED):
            discarded[index] = True
        elif outcome is not None and not carried[rnd] & suspended:
            labels[index], weights[index] = consensus, 1.0
            support[index] = (labeler, label, set(carried[rnd]))
        elif labeler not in suspended:  # no round, or a suspended labeler's voice carried it
            labels[index], labeler_of[index] = label, labeler
            weights[index] = weights_of.get(labeler, 1.0)

    secured_labels = np.full(n, -1, dtype=np.int64)
    for index in np.flatnonzero(secured):
        if ground_truth[index] >= 0:
            secured_labels[index] = ground_truth[index]
        elif secured_votes.get(int(index)):
            keep = secured_label(secured_votes[int(index)])
            if keep is not None:
                secured_labels[index] = keep
    labels[secured] = -1  # never trained on
    return PoolLabels(n=n, labels=labels, weights=weights, labeler_of=labeler_of, discarded=discarded,
                      secured=secured & (secured_labels >= 0), secured_labels=secured_labels,
                      ground_truth=ground_truth, item_ids=item_ids, secured_items=secured,
                      first_label=first_label, support=support)


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------

RAW_FIELDS = ["annotation_id", "item_id", "item_index", "source", "batch_iteration", "kind", "labeler",
              "label", "label_name", "seconds", "created_at"]
RESOLVED_FIELDS = ["item_id", "item_index", "source", "status", "resolved_label", "resolved_label_name",
                   "majority_label", "majority_label_name", "n_annotations", "agreement", "ground_truth",
                   "ground_truth_name"]


def export_raw_rows(project: Project):
    """One row per annotation (staff only)."""
    classes = project.classes
    qs = (Annotation.objects.filter(assignment__batch__project=project)
          .select_related("assignment__item", "assignment__labeler", "assignment__batch")
          .order_by("created_at", "id"))
    for a in qs.iterator(chunk_size=2000):
        asg = a.assignment
        yield {
            "annotation_id": a.pk, "item_id": asg.item_id, "item_index": asg.item.index,
            "source": asg.item.source, "batch_iteration": asg.batch.iteration, "kind": asg.kind,
            "labeler": asg.labeler.get_username() if asg.labeler else "", "label": a.label,
            "label_name": classes[a.label] if a.label < len(classes) else "",
            "seconds": a.seconds, "created_at": a.created_at.isoformat(),
        }


def export_resolved_rows(project: Project):
    """One row per item: the loop's resolved label, the plurality of all (non-suspended) answers."""
    classes = project.classes
    state = pool_labels(project)
    suspended = suspended_ids()
    votes: dict[int, list[int]] = defaultdict(list)
    for index, labeler, label in (Annotation.objects.filter(assignment__batch__project=project)
                                  .values_list("assignment__item__index", "assignment__labeler_id", "label")):
        if labeler not in suspended:
            votes[index].append(label)
    sources = dict(project.items.values_list("index", "source"))
    name = lambda k: classes[k] if k is not None and 0 <= k < len(classes) else ""  # noqa: E731
    for index in range(state.n):
        v = votes.get(index, [])
        majority, agreement = None, None
        if v:
            counts = Counter(v).most_common()
            agreement = counts[0][1] / len(v)
            if len(counts) == 1 or counts[0][1] > counts[1][1]:
                majority = counts[0][0]
        if state.secured[index]:
            status, resolved = "secured", int(state.secured_labels[index])
        elif state.discarded[index]:
            status, resolved = "discarded", None
        elif state.labels[index] >= 0:
            status = "verified" if state.labeler_of[index] < 0 else "labeled"
            resolved = int(state.labels[index])
        else:
            status, resolved = "unlabeled", None
        gt = int(state.ground_truth[index]) if state.ground_truth[index] >= 0 else None
        yield {
            "item_id": int(state.item_ids[index]), "item_index": index, "source": sources.get(index, ""),
            "status": status, "resolved_label": resolved, "resolved_label_name": name(resolved),
            "majority_label": majority, "majority_label_name": name(majority), "n_annotations": len(v),
            "agreement": None if agreement is None else round(agreement, 4),
            "ground_truth": gt, "ground_truth_name": name(gt),
        }


def item_count(project: Project) -> int:
    return Item.objects.filter(project=project).count()
