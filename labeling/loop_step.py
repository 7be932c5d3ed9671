"""The web app's driver of the loop engine: one step of :func:`learner.engine.step` on database rows.

:func:`advance_loop` (the Celery task's body) runs in three parts so the heavy part holds no lock:

1. a short transaction checks the batch is complete, freezes it (undo is refused from then on) and
   reads the engine's state (:func:`engine_state`);
2. the engine step runs on arrays (training, the checks, crafting, trust, the next query),
   deterministic for the project's seed and iteration;
3. a short transaction re-checks that nobody processed the batch meanwhile (same phase, not
   closed) and persists the plan (:func:`_persist`). A redelivered or duplicated task therefore
   finds the batch closed (or in the next phase) and does nothing; ``unique (project,
   iteration)`` backs this up.

With ``pipeline`` (``LiveConfig.pipeline``) two batches are open: the oldest, which the task
processes, and the younger one, which people label meanwhile (the queue hands it out while the
older one is frozen). Only the oldest open batch is ever processed. Its state leaves out every
answer of the younger batch (labels, answers, labels bought: the engine's contract, ``pending``
is the younger batch's items, paid for already), so the step computes the same plan however far
people got with the younger batch. Closing the older batch opens the plan's next batch after
the younger one, and sends the task for the younger one at once when it is complete already.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from learner import engine, live
from learner.trust import LabelerTrust, Status

from . import features as feature_cache
from . import history, notifications, queue, selectors
from .models import Annotation, Assignment, IterationMetric, LabelerProfile, Project, QueryBatch
from . import workflow
from .services import _assign_first_labels, release_open_work
from .workflow import Conflict

log = logging.getLogger(__name__)


@dataclass
class _Snapshot:
    project: Project
    batch: QueryBatch
    cfg: live.LiveConfig
    state: engine.EngineState
    pool: selectors.PoolLabels


def _trust_of(profile: LabelerProfile | None, project: Project) -> LabelerTrust:
    if profile is None:
        return LabelerTrust()
    status = (Status.SUSPENDED if profile.is_suspended else Status.FLAGGED if profile.is_flagged else Status.ACTIVE)
    return LabelerTrust(trust=profile.trust, status=status, labels_given=profile.labels_given,
                        checked=profile.checked, disagreements=profile.disagreements, alerts=profile.alerts,
                        cleared=int((profile.cleared or {}).get(str(project.pk), 0)))


def pending_items(project: Project, batch: QueryBatch) -> np.ndarray:
    """Item indices of the open batches younger than ``batch`` (pipeline: labeled while ``batch``
    is processed), each once: the engine's ``EngineState.pending``."""
    items = (Assignment.objects.filter(batch__project=project, batch__closed_at__isnull=True,
                                       batch__iteration__gt=batch.iteration, kind=Assignment.Kind.FIRST_LABEL)
             .exclude(status=Assignment.Status.SKIPPED).values_list("item__index", flat=True).distinct())
    return np.array(sorted(items), dtype=np.int64)


def engine_state(project: Project, batch: QueryBatch) -> tuple[engine.EngineState, selectors.PoolLabels]:
    """The engine's state of ``project`` with ``batch`` open, read from the database.

    Only the answers of ``batch`` and the batches before it count: a younger batch's answers
    (pipeline) are not part of the state; its items are ``pending``. With ``batch_per_annotator``
    the people working now (:func:`labeling.queue.active_labeler_count`) are ``active_labelers``."""
    through = batch.iteration
    pool = selectors.pool_labels(project, through=through)
    firsts = (Annotation.objects.filter(assignment__batch__project=project, discard__isnull=True,
                                        assignment__kind=Assignment.Kind.FIRST_LABEL,
                                        assignment__batch__iteration__lte=through)
              .values_list("assignment__labeler_id", "assignment__item__index", "label").order_by("id"))
    first_labels: dict[int, list[tuple[int, int]]] = {}
    for uid, index, label in firsts:
        first_labels.setdefault(int(uid), []).append((int(index), int(label)))
    crowd = [int(u) for u in selectors.member_ids(project)]
    people = set(crowd) | set(first_labels) | {int(u) for u in pool.labeler_of if u >= 0}
    profiles = {p.user_id: p for p in LabelerProfile.objects.filter(user_id__in=people)}
    trust = {uid: _trust_of(profiles.get(uid), project) for uid in sorted(people)}
    requests = {}
    for item, original, label, votes, asked in history.pending_rounds(batch):
        requests[item] = engine.Request(item=item, original=original, label=label, votes=votes, asked=asked)
    batch_items = np.array(sorted(Assignment.objects.filter(batch=batch, kind=Assignment.Kind.FIRST_LABEL,
                                                            status=Assignment.Status.DONE)
                                  .values_list("item__index", flat=True)), dtype=np.int64)
    prev = IterationMetric.objects.filter(project=project, iteration=batch.iteration - 1).first()
    carry = dict(batch.loop_state or {})
    state = engine.EngineState(
        labels=pool.labels.copy(), labeler_of=pool.labeler_of.copy(), discarded=pool.discarded.copy(),
        secured=pool.secured_items.copy(), secured_labels=np.where(pool.secured, pool.secured_labels, -1),
        trust=trust, crowd=crowd, iteration=batch.iteration,
        phase=engine.REANNOTATION if batch.phase == QueryBatch.Phase.REANNOTATION else engine.LABELING,
        batch=batch_items, requests=requests, bought=selectors.labels_bought(project, through=through),
        answers=history.annotation_triples(project, through=through), first_labels=first_labels,
        verdicts=history.round_verdicts(project), support=dict(pool.support),
        artificial=live.load_artificial(feature_cache.artificial_path(project, k) for k in range(batch.iteration + 1)),
        perturbations={int(k): (math.inf if v is None else float(v)) for k, v in (carry.get("perturbations") or {}).items()},
        previous_secured_accuracy=prev.secured_accuracy if prev else None,
        reported_pairs=history.reported_pairs(project), carry=carry, pending=pending_items(project, batch),
        active_labelers=queue.active_labeler_count(project) if project.live_config.batch_per_annotator else None,
        gold=pool.secured_items & (pool.ground_truth >= 0))
    return state, pool


def _take_snapshot(batch_id: int) -> _Snapshot | str:
    with transaction.atomic():
        batch = QueryBatch.objects.filter(pk=batch_id).first()
        if batch is None:
            return "noop: no such batch"
        project = Project.objects.select_for_update().get(pk=batch.project_id)
        batch = QueryBatch.objects.select_for_update().get(pk=batch_id)
        if batch.closed_at is not None:
            return "noop: batch already closed"
        if project.state == Project.State.FINISHED:
            return "noop: project finished"
        if QueryBatch.objects.filter(project=project, closed_at__isnull=True, iteration__lt=batch.iteration).exists():
            return "noop: an older batch is still open"  # pipeline: closing it sends this batch's task
        if not selectors.batch_is_complete(batch):
            if project.state == Project.State.UPDATING:  # an answer was undone during the grace period
                workflow.transition(project, Project.State.LABELING)
                project.save(update_fields=["state", "updated_at"])
            return "noop: batch not complete"
        if project.state != Project.State.UPDATING:
            workflow.transition(project, Project.State.UPDATING)
            project.save(update_fields=["state", "updated_at"])
        if batch.frozen_at is None:
            batch.frozen_at = timezone.now()
            batch.save(update_fields=["frozen_at"])
        state, pool = engine_state(project, batch)
        return _Snapshot(project=project, batch=batch, cfg=project.live_config, state=state, pool=pool)


def _previous_model(snap: _Snapshot, pool: engine.Pool):
    """F_{i-1}: saved by the previous iteration; retrained without this batch if the file is gone."""
    i = snap.batch.iteration
    if i == 0:
        return None
    model = live.load_model(feature_cache.model_path(snap.project, i - 1))
    if model is None:
        log.warning("project %s: model of iteration %s missing from the cache; retraining it", snap.project.pk, i - 1)
        labels = snap.state.labels.copy()
        labels[snap.state.batch] = -1
        if (labels >= 0).any():
            model = live.train_model(pool.features, labels, snap.state.weights(), pool.n_classes,
                                     standardizer=pool.standardizer, seed=snap.cfg.seed + i - 1)
    return model


def advance_loop(*, batch_id: int) -> str:
    """Process a complete batch: one engine step, persisted. Idempotent.

    Returns a short description of what happened (for logs and tests).
    """
    snap = _take_snapshot(batch_id)
    if isinstance(snap, str):
        return snap
    return _persist(snap, _plan(snap))


def _plan(snap: _Snapshot) -> engine.Plan:
    """The heavy part, no lock held: the engine step, the model and crafted rows saved to the cache."""
    features, features_file = feature_cache.features_for(snap.project)
    i = snap.batch.iteration
    tuner, refit, cache_key = None, None, str(features_file)
    if snap.cfg.training_mode == "finetune":  # the stage of the last closed iteration, and its features
        tuner, features = feature_cache.fine_tuner(snap.project, i - 1)
        refit = feature_cache.finetune_refit(snap.project, tuner, i)
        cache_key += f"#stage{i - 1}"
        log.info("project %s batch %s: finetune on %s", snap.project.pk, i, tuner.device)
    crafter = (feature_cache.pixel_crafter(snap.project, backbone_of=tuner.backbone if tuner else None)
               if snap.cfg.augment_space == "pixel" else None)
    pool = engine.Pool(features=features, n_classes=snap.project.n_classes, cache_key=cache_key,
                       crafter=crafter, refit=refit)
    previous = _previous_model(snap, pool)
    plan = engine.step(snap.cfg, pool, snap.state, previous_model=previous)
    if snap.batch.phase == QueryBatch.Phase.LABELING:
        live.save_artificial(feature_cache.artificial_path(snap.project, i), plan.artificial)
    if plan.closed:
        live.save_model(feature_cache.model_path(snap.project, i), plan.model)
        truth = (snap.pool.ground_truth >= 0) & ~snap.pool.secured_items
        plan.metric["ground_truth_accuracy"] = live.accuracy_on(plan.model, pool.features, snap.pool.ground_truth, truth)
        if snap.cfg.pipeline:  # the batch labeled while F_i trained is paid for when F_i is ready (as in simulate)
            plan.metric["labels_bought"] += len(snap.state.batch)
    return plan


def record_loop_error(*, batch_id: int, error: str) -> None:
    """Keep the loop task's last failure on the project (shown on the staff page)."""
    Project.objects.filter(batches__pk=batch_id).update(loop_error=error[:5000])


def _persist(snap: _Snapshot, plan: engine.Plan) -> str:
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=snap.project.pk)
        project.loop_error = ""
        batch = QueryBatch.objects.select_for_update().get(pk=snap.batch.pk)
        if batch.closed_at is not None or batch.phase != snap.batch.phase:
            return "noop: processed meanwhile"
        if not selectors.batch_is_complete(batch):
            return "noop: batch changed meanwhile"
        newly_blocked = _save_trust(plan, project=project)
        notifications.after_commit(project=project, events=plan.events)  # staff are mailed once this commits
        for uid in sorted(newly_blocked):  # their open work elsewhere goes to others
            transaction.on_commit(lambda uid=uid: _release_after_commit(uid))
        if plan.rounds:
            history.resolve_rounds(batch=batch, rounds=plan.rounds)
        if plan.confusion:
            history.save_confusion(project=project, estimates=plan.confusion)
        if plan.requests:
            created = _open_reannotation(batch, plan.requests)
            batch.phase, batch.loop_state = QueryBatch.Phase.REANNOTATION, plan.carry
            batch.frozen_at = None  # its new assignments may be answered (and undone) again
            batch.save(update_fields=["phase", "loop_state", "frozen_at"])
            workflow.transition(project, Project.State.LABELING)
            project.save(update_fields=["state", "loop_error", "updated_at"])
            return f"reannotation: {created} assignments for {len(plan.requests)} items"
        IterationMetric.objects.get_or_create(project=project, iteration=batch.iteration,
                                              defaults={**plan.metric, "started_at": batch.opened_at})
        batch.phase, batch.closed_at, batch.loop_state = QueryBatch.Phase.CLOSED, timezone.now(), plan.carry
        batch.save(update_fields=["phase", "closed_at", "loop_state"])
        younger = list(QueryBatch.objects.select_for_update().filter(project=project, closed_at__isnull=True)
                       .exclude(pk=batch.pk).order_by("iteration"))  # pipeline: labeled meanwhile
        if plan.stop:
            for other in younger:  # nothing more is handed out; the answers it got stay (and were paid)
                other.phase, other.closed_at = QueryBatch.Phase.CLOSED, timezone.now()
                other.save(update_fields=["phase", "closed_at"])
            workflow.transition(project, Project.State.FINISHED)
            project.stop_reason = plan.stop
            project.save(update_fields=["state", "stop_reason", "loop_error", "updated_at"])
            return f"finished: {plan.stop}"
        done = f"closed batch {batch.iteration}"
        if plan.next_items:  # after the younger batch, if any (pipeline), else right after this one
            nxt = QueryBatch.objects.create(project=project, iteration=(younger[-1] if younger else batch).iteration + 1,
                                            strategy=snap.cfg.strategy, bought_before=selectors.labels_bought(project))
            items = {i.index: i for i in project.items.filter(index__in=plan.next_items)}
            _assign_first_labels(nxt, [items[k] for k in plan.next_items])  # queued: whoever asks first labels them
            project.iteration = nxt.iteration
            done = f"opened batch {nxt.iteration} with {len(plan.next_items)} items"
        if younger and selectors.batch_is_complete(younger[0]):
            # people finished the younger batch while this one was processed: its turn now, once
            # the undo window of its last answer has passed (usually long ago)
            last = younger[0].assignments.aggregate(last=Max("completed_at"))["last"] or timezone.now()
            wait = workflow.loop_delay_seconds() - (timezone.now() - last).total_seconds()
            workflow.transition(project, Project.State.UPDATING)
            workflow.enqueue("process_batch", younger[0].pk, countdown=max(wait, 0.0))
            done += f"; batch {younger[0].iteration} complete, sent"
        else:
            workflow.transition(project, Project.State.LABELING)
        project.save(update_fields=["state", "iteration", "loop_error", "updated_at"])
        return done


def _release_after_commit(uid: int) -> None:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(pk=uid).first()
    if user is not None:
        release_open_work(user=user)


def _save_trust(plan: engine.Plan, *, project: Project) -> set[int]:
    """Write the plan's trust states and history; returns the labelers flagged or suspended just now."""
    newly_blocked = set()
    for uid, st in sorted(plan.trust.items()):
        profile, _ = LabelerProfile.objects.select_for_update().get_or_create(user_id=uid)
        was_blocked = profile.is_suspended or profile.is_flagged
        profile.trust = min(max(float(st.trust), 0.0), 1.0)
        profile.checked, profile.disagreements, profile.alerts = st.checked, st.disagreements, st.alerts
        profile.is_suspended = st.status is Status.SUSPENDED
        profile.is_flagged = st.status is Status.FLAGGED
        profile.cleared = {**(profile.cleared or {}), str(project.pk): int(st.cleared)}
        profile.save()
        if not was_blocked and (profile.is_suspended or profile.is_flagged):
            newly_blocked.add(uid)
    if plan.events:
        history.record_events(project=project, events=plan.events)
    return newly_blocked


def _open_reannotation(batch: QueryBatch, requests: list[engine.Request]) -> int:
    """One queued slot per new voter of each round; the queue hands them to distinct members,
    never the original labeler (the database refuses that too)."""
    items = {i.index: i for i in batch.project.items.filter(index__in=[r.item for r in requests])}
    created = 0
    for req in requests:
        made = [Assignment.objects.create(item=items[req.item], batch=batch, original_labeler_id=req.original,
                                          kind=Assignment.Kind.REANNOTATION, status=Assignment.Status.QUEUED)
                for _ in req.new_voters]
        created += len(made)
        history.open_round(batch=batch, item=items[req.item], original_labeler_id=req.original,
                                  assignments=made)
    return created


__all__ = ["advance_loop", "engine_state", "record_loop_error", "Conflict"]
