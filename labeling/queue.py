"""The shared work queue: which item of the open batch someone gets next, and for how long.

A batch's assignments are the slots of one queue, in the order the loop created them (their
ids). Nobody owns a share of the batch up front. With ``pipeline`` two batches are open at once
(the one the loop closes next and the one people label while the model trains): the older
one's slots come first, then the younger one's; a batch the loop task has frozen hands out nothing. Someone who asks for work (:func:`next_work`)
gets back the claim they already hold (its lease renewed), or claims:

1. the first *queued* slot they may label: a member of the project, not suspended (nor flagged
   while someone unflagged can work), never a re-annotation of their own label (the slot's
   ``original_labeler``), and never an item they already have, had or skipped in this batch;
2. otherwise a claim whose lease ran out (its holder stopped answering), then an item someone
   else claimed only *ahead* (``prefetched``, for their page's preload): work that someone holds
   but is not looking at never makes anyone wait.

A claim is one conditional ``UPDATE`` of one row (on PostgreSQL its slot is picked ``FOR UPDATE
SKIP LOCKED``: two people asking at once lock different rows and never get the same item; SQLite
serialises writers). The database refuses what must never happen anyway: a re-annotation by the
original labeler (CHECK) and two slots of one item for one person in a batch (UNIQUE).

A claim lasts ``LABELING_LEASE_SECONDS`` (env ``ROBUSTAL_LEASE_SECONDS``, default 300); its holder
may still answer after that until someone else takes it over. Suspending or flagging someone,
or removing them from a project, returns their claims to the queue at once
(:func:`release_claims`). Skips put the item back as a new slot for someone else
(:func:`labeling.answering.skip_assignment`); a first label skipped and then left unclaimed for a
whole lease leaves the batch (:func:`labeling.answering.retire_stale_skips`, run when someone asks
for work and gets none).
"""
from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from . import selectors
from .db import instances, prepared_cursor
from .models import ANNOTATORS_GROUP, TAKES_ANSWERS, Assignment, LabelerProfile, Project, ProjectMember, QueryBatch


def lease_seconds() -> float:
    return float(getattr(settings, "LABELING_LEASE_SECONDS", 300))


@dataclass
class Work:
    """What :func:`next_work` hands out: the item to show, and one to preload (``prefetch``)."""

    current: Assignment | None
    upcoming: Assignment | None = None
    project: Project | None = None  # the project the answer is about (None: no project at all)

    @property
    def batch_id(self) -> int | None:
        return self.current.batch_id if self.current is not None else None

    @property
    def bought_before(self) -> int | None:
        """Labels bought before the current item's batch opened (read with the item)."""
        return getattr(self.current, "batch_bought_before", None)


@functools.cache
def _read_sql(vendor: str) -> dict[str, str]:
    """Hand-written statements of ``next`` (Django compiles every ORM query anew, about 1 ms of
    CPU for a join; ``next`` runs on every answer). Items come with their batch's
    ``bought_before`` (``batch_bought_before``) for the progress count."""
    q = connection.ops.quote_name
    a, b, p = (q(model._meta.db_table) for model in (Assignment, QueryBatch, Project))
    item = f"SELECT a.*, b.bought_before AS batch_bought_before FROM {a} a JOIN {b} b ON b.id = a.batch_id "
    # literals, not parameters: see _claim_sql
    claimed, working = f"'{Assignment.Status.OPEN.value}'", _states()
    return {
        # the user's claims in the project's open batches while they hand out work; the one on screen first
        "held": (item + f"JOIN {p} p ON p.id = b.project_id WHERE a.labeler_id = %s AND a.status = {claimed} "
                 f"AND b.project_id = %s AND b.closed_at IS NULL AND b.frozen_at IS NULL AND p.state IN {working} "
                 "AND p.paused_at IS NULL ORDER BY a.prefetched, a.lease_until DESC, a.id"),
        "one": item + "WHERE a.id = %s",
        "renew": (f"UPDATE {a} SET lease_until = %s, prefetched = false WHERE id = %s AND labeler_id = %s "
                  f"AND status = {claimed}"),
    }


def _states() -> str:
    """The project states that hand out work (:data:`labeling.models.TAKES_ANSWERS`) as an SQL list."""
    return "(" + ", ".join(f"'{state}'" for state in TAKES_ANSWERS) + ")"


def _items(statement: str, params: list) -> list[Assignment]:
    """Assignments (with ``batch_bought_before``) of one of :func:`_read_sql`'s SELECTs (on
    PostgreSQL a statement prepared on the server), through Django's converters."""
    with prepared_cursor() as cursor:
        cursor.execute(_read_sql(connection.vendor)[statement], params)
        return instances(Assignment, cursor)


def held_claims(user, project: Project) -> list[Assignment]:
    """The user's claims in the project's open batches while they hand out work (taking answers,
    not paused, not frozen): the one on screen first (not prefetched, latest lease)."""
    return _items("held", [user.pk, project.pk])


@functools.cache
def _claim_sql(vendor: str, takeover: bool) -> str:
    """One claim in one statement: the project's open batches (taking answers, not paused, not
    frozen), the user eligible in them (:func:`labeling.selectors.eligible_labelers` in SQL), and
    the first slot they may take, made theirs: the oldest such batch's first, then the next one's
    (``COALESCE`` evaluates the second pick only when the first finds nothing, so a project with
    one open batch pays nothing for it)."""
    q = connection.ops.quote_name
    a, b, p, m, lp = (q(model._meta.db_table) for model in (Assignment, QueryBatch, Project, ProjectMember,
                                                           LabelerProfile))
    user = get_user_model()
    u, ug, g = q(user._meta.db_table), q(user.groups.through._meta.db_table), q(Group._meta.db_table)
    lock = " FOR UPDATE SKIP LOCKED" if vendor == "postgresql" else ""
    # Constants are written into the SQL, not bound: a statement prepared on the server gets a
    # generic plan after a few runs, and only a literal status lets it use the partial indexes.
    queued, claimed = f"'{Assignment.Status.QUEUED.value}'", f"'{Assignment.Status.OPEN.value}'"
    working, group = _states(), f"'{ANNOTATORS_GROUP}'"

    def member(alias: str, extra: str) -> str:  # an active annotator member of the project
        x = alias
        return (f"SELECT 1 FROM {m} m{x} JOIN {u} u{x} ON u{x}.id = m{x}.user_id "
                f"LEFT JOIN {lp} lp{x} ON lp{x}.user_id = m{x}.user_id "
                f"WHERE m{x}.project_id = %(project)s AND u{x}.is_active AND EXISTS (SELECT 1 FROM {ug} ug{x} "
                f"JOIN {g} g{x} ON g{x}.id = ug{x}.group_id WHERE ug{x}.user_id = u{x}.id "
                f"AND g{x}.name = {group}) AND {extra}")

    unflagged = "(lp2.id IS NULL OR (NOT lp2.is_suspended AND NOT lp2.is_flagged))"
    eligible = member("1", "m1.user_id = %(uid)s AND (lp1.id IS NULL OR (NOT lp1.is_suspended AND "
                           f"(NOT lp1.is_flagged OR NOT EXISTS ({member('2', unflagged)}))))")
    batches = (f"SELECT b.id FROM {b} b JOIN {p} p ON p.id = b.project_id WHERE b.project_id = %(project)s "
               f"AND b.closed_at IS NULL AND b.frozen_at IS NULL AND p.state IN {working} AND p.paused_at IS NULL "
               "ORDER BY b.iteration LIMIT 1")
    if takeover:  # an expired claim first, then someone else's claim ahead
        which = (f"c.status = {claimed} AND c.labeler_id <> %(uid)s AND (c.lease_until < %(now)s OR c.prefetched)",
                 "ORDER BY c.prefetched, c.lease_until, c.id")
        recheck = f"status = {claimed} AND labeler_id <> %(uid)s AND (lease_until < %(now)s OR prefetched)"
    else:
        which = (f"c.status = {queued}", "ORDER BY c.id")
        recheck = f"status = {queued}"

    def pick(offset: str) -> str:  # the first slot the user may take in the open batch at this rank
        return (f"SELECT c.id FROM {a} c WHERE c.batch_id = ({batches}{offset}) AND {which[0]} "
                "AND (c.original_labeler_id IS NULL OR c.original_labeler_id <> %(uid)s) "
                f"AND NOT EXISTS (SELECT 1 FROM {a} o WHERE o.batch_id = c.batch_id AND o.item_id = c.item_id "
                f"AND o.labeler_id = %(uid)s) AND EXISTS ({eligible}) {which[1]} LIMIT 1{lock}")

    return (f"UPDATE {a} SET labeler_id = %(uid)s, status = {claimed}, lease_until = %(until)s, "
            f"prefetched = %(ahead)s WHERE id = COALESCE(({pick('')}), ({pick(' OFFSET 1')})) "
            f"AND {recheck} RETURNING id")


def _claim(user, project: Project, *, ahead: bool = False, takeover: bool = True) -> Assignment | None:
    """Claim one slot of the project's open batch for ``user`` (queued first, then a takeover)."""
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    params = {"uid": user.pk, "project": project.pk, "now": adapt(now), "ahead": ahead,
              "until": adapt(now + timedelta(seconds=lease_seconds()))}
    for mode in ((False, True) if takeover else (False,)):
        for _ in range(3):  # a unique violation: the same person claimed a sibling slot at the same instant
            try:
                # in autocommit the statement is its own transaction; inside one, a savepoint keeps
                # a refused claim from breaking the caller's transaction
                with (transaction.atomic() if connection.in_atomic_block else nullcontext()), \
                        prepared_cursor() as cursor:
                    cursor.execute(_claim_sql(connection.vendor, mode), params)
                    row = cursor.fetchone()
            except IntegrityError:
                continue
            if row is None:
                break
            return _items("one", [row[0]])[0]
    return None


def _renew(asg: Assignment, user) -> bool:
    """Extend the user's claim (and make a claim ahead the current one); False if it is no longer theirs."""
    until = timezone.now() + timedelta(seconds=lease_seconds())
    with prepared_cursor() as cursor:
        cursor.execute(_read_sql(connection.vendor)["renew"],
                       [connection.ops.adapt_datetimefield_value(until), asg.pk, user.pk])
        renewed = cursor.rowcount == 1
    if renewed:
        asg.lease_until, asg.prefetched = until, False
    return renewed


def next_work(*, user, project: Project | None = None, prefetch: bool = False) -> Work:
    """The user's next item (optionally in one project), claiming one when they hold none.

    ``prefetch``: also hold the item after it (claimed *ahead*: anyone who runs out of work may
    take it over), so the page can load its image while the current one is shown. The project's
    state, pause and open batch are read by the statements themselves (never from the caller's
    copy of the project).
    """
    projects = [project] if project is not None else selectors.claimable_projects(user)
    for p in projects:
        held = held_claims(user, p)
        current = next((h for h in held if _renew(h, user)), None)
        if current is None:
            current = _claim(user, p)
        if current is None:
            continue
        upcoming = None
        if prefetch:
            upcoming = next((h for h in held if h.pk != current.pk and h.prefetched), None)
            if upcoming is None:
                upcoming = _claim(user, p, ahead=True, takeover=False)
        return Work(current=current, upcoming=upcoming, project=p)
    return Work(current=None, project=project)


def release_claims(*, user, project: Project | None = None) -> int:
    """Return ``user``'s claims in open batches (optionally of one project) to the queue at once."""
    qs = Assignment.objects.filter(labeler=user, status=Assignment.Status.OPEN, batch__closed_at__isnull=True)
    if project is not None:
        qs = qs.filter(batch__project=project)
    released = 0
    for project_id in sorted(set(qs.values_list("batch__project_id", flat=True))):
        with transaction.atomic():
            Project.objects.select_for_update().get(pk=project_id)  # the locking rule: project first
            ids = list(Assignment.objects.select_for_update()
                       .filter(labeler=user, status=Assignment.Status.OPEN, batch__project_id=project_id,
                               batch__closed_at__isnull=True).values_list("pk", flat=True))
            released += Assignment.objects.filter(pk__in=ids).update(
                labeler=None, status=Assignment.Status.QUEUED, lease_until=None, prefetched=False)
    return released


def _working(project: Project, now=None):
    """Members of ``project`` working now: active annotators, neither suspended nor flagged, who
    answered or skipped one of its items within the last lease, or hold a claim in it whose lease
    runs (taken or renewed within the last lease)."""
    now = now or timezone.now()
    since = now - timedelta(seconds=lease_seconds())
    recent = Assignment.objects.filter(labeler=OuterRef("pk"), batch__project=project).filter(
        Q(completed_at__gte=since) | Q(status=Assignment.Status.OPEN, lease_until__gte=now))
    return (selectors.annotators().filter(project_memberships__project=project)
            .exclude(labeler_profile__is_suspended=True).exclude(labeler_profile__is_flagged=True)
            .filter(Exists(recent)))


def active_labeler_count(project: Project, *, now=None) -> int:
    """Members of ``project`` working now (:func:`_working`), at least 1
    (``LiveConfig.batch_per_annotator`` sizes the next batch by it). One query."""
    return max(_working(project, now).count(), 1)


def someone_working_may_take(asg: Assignment, project: Project) -> bool:
    """Whether a member working now (:func:`_working`) may claim ``asg``'s item in its batch."""
    others = set(_working(project).values_list("pk", flat=True)) - selectors.item_holders(asg)
    others.discard(asg.original_labeler_id)
    return bool(others)


def someone_else_may_take(asg: Assignment, user, project: Project) -> bool:
    """Whether an eligible member of ``project`` other than ``user`` may claim ``asg``'s item in its batch."""
    others = set(selectors.eligible_labelers(project)) - selectors.item_holders(asg) - {user.pk}
    others.discard(asg.original_labeler_id)
    return bool(others)


def requeue(asg: Assignment) -> Assignment:
    """A new queued slot for the same item, kind and exclusion as ``asg`` (a skip puts it back)."""
    from .models import ReannotationRound

    copy = Assignment.objects.create(item_id=asg.item_id, batch_id=asg.batch_id, kind=asg.kind,
                                     original_labeler_id=asg.original_labeler_id,
                                     status=Assignment.Status.QUEUED)
    for rnd in ReannotationRound.objects.filter(assignments=asg):
        rnd.assignments.add(copy)
    return copy


__all__ = ["Work", "active_labeler_count", "lease_seconds", "next_work", "release_claims", "someone_else_may_take",
           "someone_working_may_take", "requeue"]
