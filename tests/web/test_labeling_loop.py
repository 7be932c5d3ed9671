"""The live loop as services: batches, metrics, re-annotation, idempotency, constraints."""
from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from labeling import answering, features, loop_step, selectors, services, tasks, workflow
from labeling.models import Annotation, Assignment, IterationMetric, LabelerProfile, Project, QueryBatch
from tests.web.factories import AnnotatorFactory, AssignmentFactory, ItemFactory, QueryBatchFactory
from tests.web.labeling_support import (annotators, answer_open, claim, digits_project, labeling_dirs,  # noqa: F401
                                        staff)

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(labeling_dirs, annotators):
    return digits_project()


def test_start_opens_a_random_batch_with_a_secured_set(project, annotators):
    assert project.state == Project.State.LABELING and project.iteration == 0
    batch = QueryBatch.objects.get(project=project)
    asg = list(batch.assignments.all())
    assert len(asg) == 6 and {a.kind for a in asg} == {"first_label"}
    assert {(a.labeler_id, a.status) for a in asg} == {(None, "queued")}  # the members' shared queue
    assert batch.bought_before == 6  # the secured set's admin-verified labels
    secured = set(project.items.filter(is_secured=True).values_list("pk", flat=True))
    assert len(secured) == 6 and not secured & {a.item_id for a in asg}
    with pytest.raises(workflow.Conflict):
        services.start_project(project=project)


def test_one_iteration_trains_records_and_opens_the_next_batch(project):
    answer_open(project)
    project.refresh_from_db()
    assert project.state == Project.State.UPDATING
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    outcome = loop_step.advance_loop(batch_id=batch0.pk)
    while outcome.startswith("reannotation"):  # a model of S audits the first batch (truthful answers settle it)
        answer_open(project)
        outcome = loop_step.advance_loop(batch_id=batch0.pk)
    assert outcome.startswith("opened batch 1")
    project.refresh_from_db()
    batch0.refresh_from_db()
    assert project.state == Project.State.LABELING and project.iteration == 1
    assert batch0.closed_at is not None and batch0.phase == "closed"
    metric = IterationMetric.objects.get(project=project, iteration=0)
    votes = Annotation.objects.filter(assignment__batch=batch0, assignment__kind="reannotation").count()
    assert metric.labels_bought == 12 + votes and metric.n_labeled == 6 and metric.secured_accuracy is not None
    batch1 = QueryBatch.objects.get(project=project, iteration=1)
    assert batch1.strategy == "robust" and batch1.assignments.count() == 6
    new_items = set(batch1.assignments.values_list("item_id", flat=True))
    assert not new_items & set(batch0.assignments.values_list("item_id", flat=True))
    assert not new_items & set(project.items.filter(is_secured=True).values_list("pk", flat=True))
    assert features.model_path(project, 0).is_file()


def test_redelivered_task_makes_no_second_batch(project):
    answer_open(project)
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    first = tasks.process_batch.apply(args=[batch0.pk]).get()
    again = tasks.process_batch.apply(args=[batch0.pk]).get()
    assert first.startswith("opened batch 1") and again.startswith("noop")
    assert QueryBatch.objects.filter(project=project).count() == 2
    assert IterationMetric.objects.filter(project=project).count() == 1


def test_two_workers_racing_on_one_batch_open_one_batch(project):
    """Both take a snapshot before either writes (a redelivery while the first still runs)."""
    answer_open(project)
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    snap_a = loop_step._take_snapshot(batch0.pk)
    snap_b = loop_step._take_snapshot(batch0.pk)
    plan_a = loop_step._plan(snap_a)
    plan_b = loop_step._plan(snap_b)
    assert plan_a.next_items == plan_b.next_items  # deterministic
    assert loop_step._persist(snap_a, plan_a).startswith("opened")
    assert loop_step._persist(snap_b, plan_b).startswith("noop")
    assert QueryBatch.objects.filter(project=project).count() == 2


def test_task_on_an_incomplete_batch_is_a_noop(project):
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    assert loop_step.advance_loop(batch_id=batch0.pk) == "noop: batch not complete"
    assert loop_step.advance_loop(batch_id=999999) == "noop: no such batch"


def test_undo_during_the_grace_period_cancels_the_update(project):
    answer_open(project)
    last = Assignment.objects.filter(batch__project=project).order_by("-completed_at").first()
    answering.undo(user=last.labeler, assignment_id=last.pk)
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    assert loop_step.advance_loop(batch_id=batch0.pk) == "noop: batch not complete"
    project.refresh_from_db()
    assert project.state == Project.State.LABELING


def test_suspicious_labels_go_to_other_labelers_then_resolve(project, annotators):
    """ann_a answers wrongly; the model disagrees; one other labeler re-annotates first (adaptive
    rounds), a second one where the first disagreed (h = 2); ann_a loses trust."""
    a = annotators[0]
    answer_open(project)  # iteration 0: no previous model, so no audit
    loop_step.advance_loop(batch_id=QueryBatch.objects.get(project=project, iteration=0).pk)
    answer_open(project, wrong_for=("ann_a",))
    batch1 = QueryBatch.objects.get(project=project, iteration=1)
    outcome = loop_step.advance_loop(batch_id=batch1.pk)
    batch1.refresh_from_db()
    re = Assignment.objects.filter(batch=batch1, kind="reannotation")
    assert outcome.startswith("reannotation") and batch1.phase == "reannotation" and re.exists()
    assert {(asg.labeler_id, asg.status) for asg in re} == {(None, "queued")}  # for whoever asks (not the original)
    assert re.filter(original_labeler=a).exists()  # ann_a's wrong labels (F_0 may also doubt honest ones)
    for item in re.values_list("item", flat=True).distinct():
        assert re.filter(item=item).count() == 1  # adaptive: one re-annotator first
    project.refresh_from_db()
    assert project.state == Project.State.LABELING and batch1.frozen_at is None
    # the re-annotators answer truthfully: ann_a's labels get a second voter, then resolve
    answer_open(project)
    outcome = loop_step.advance_loop(batch_id=batch1.pk)
    rounds = 1
    while outcome.startswith("reannotation"):
        rounds += 1
        answer_open(project)
        outcome = loop_step.advance_loop(batch_id=batch1.pk)
    assert outcome.startswith("opened batch 2") and rounds >= 2
    for item in re.filter(original_labeler=a).values_list("item", flat=True).distinct():
        assert re.filter(item=item).values("labeler").distinct().count() == 2  # h = 2 distinct others
    assert all(asg.labeler_id not in (None, asg.original_labeler_id) for asg in re.all())
    metric = IterationMetric.objects.get(project=project, iteration=1)
    assert metric.reannotated == re.values("item").distinct().count()
    profile = LabelerProfile.objects.get(user=a)
    assert profile.trust < 1.0 and profile.disagreements >= 1
    state = selectors.pool_labels(project)
    for item in re.values_list("item__index", flat=True):
        assert state.labels[item] == state.ground_truth[item]  # the consensus replaced the wrong label
        assert state.labeler_of[item] == -1


def test_the_database_refuses_a_reannotation_by_the_original_labeler(project, annotators):
    a = annotators[0]
    batch = QueryBatch.objects.get(project=project, iteration=0)
    item = project.items.filter(is_secured=False).last()
    claimed = {"status": "open", "lease_until": timezone.now()}
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(item=item, batch=batch, labeler=a, original_labeler=a, kind="reannotation",
                                  **claimed)
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(item=item, batch=batch, labeler=a, kind="reannotation", **claimed)  # no original
    Assignment.objects.create(item=item, batch=batch, labeler=annotators[1], original_labeler=a,
                              kind="reannotation", **claimed)  # someone else: fine


def test_the_database_refuses_two_first_labels_per_item_and_batch(labeling_dirs):
    batch = QueryBatchFactory()
    item = ItemFactory(project=batch.project)
    AssignmentFactory(batch=batch, item=item)
    with pytest.raises(IntegrityError), transaction.atomic():
        AssignmentFactory(batch=batch, item=item)
    AssignmentFactory(batch=batch, item=item, kind="secured")  # other kinds may share the item


def test_one_annotation_per_assignment(labeling_dirs):
    asg = AssignmentFactory(status="done")
    Annotation.objects.create(assignment=asg, label=0)
    with pytest.raises(IntegrityError), transaction.atomic():
        Annotation.objects.create(assignment=asg, label=1)


def test_suspending_a_labeler_returns_their_item_to_the_queue_at_once(project, annotators):
    a, b, c = annotators
    held = claim(a, project)
    services.set_labeler_status(user=a, suspended=True)
    held.refresh_from_db()
    assert (held.labeler_id, held.status, held.lease_until) == (None, "queued", None)
    assert answering.next_assignment(user=a, project=project) is None
    assert a.pk not in selectors.eligible_labelers(project)
    assert claim(b, project).pk == held.pk  # the first waiting item again, for the next who asks


def test_waiting_work_goes_to_a_member_who_joins(project, annotators):
    from labeling import membership

    for u in annotators:
        claim(u, project)
        services.set_labeler_status(user=u, suspended=True)
    assert Assignment.objects.filter(batch__project=project, status="queued", labeler__isnull=True).count() == 6
    newcomer = AnnotatorFactory(username="newcomer")
    assert answering.next_assignment(user=newcomer, project=project) is None  # not a member
    membership.add_members(project=project, users=[newcomer])
    assert claim(newcomer, project).batch.project_id == project.pk


def test_budget_stops_the_project(labeling_dirs, annotators):
    project = digits_project(name="small", config={"budget": 18, "secured_size": 6, "initial_size": 6})
    answer_open(project)
    loop_step.advance_loop(batch_id=QueryBatch.objects.get(project=project, iteration=0).pk)
    answer_open(project)
    outcome = loop_step.advance_loop(batch_id=QueryBatch.objects.get(project=project, iteration=1).pk)
    project.refresh_from_db()
    assert outcome == "finished: budget" and project.state == "finished" and project.stop_reason == "budget"
    assert selectors.labels_bought(project) <= 18


def test_secured_set_without_ground_truth_goes_to_h_labelers(labeling_dirs, annotators):
    from labeling import importers
    from tests.web.labeling_support import random_images

    from labeling import membership

    project = services.create_project(name="nogt", classes=["a", "b"],
                                      config={"secured_size": 3, "initial_size": 4, "h": 2, "feature_size": 8,
                                              "channels": 1})
    importers.import_arrays(project=project, images=random_images(12))
    with pytest.raises(workflow.Conflict, match="no annotators"):
        services.start_project(project=project)  # staff choose the members first
    membership.set_members(project=project, users=annotators)
    batch = services.start_project(project=project)
    secured = batch.assignments.filter(kind="secured")
    assert secured.count() == 6 and secured.values("item").distinct().count() == 3
    answered = 0  # label 0 for everything (no ground truth)
    for _ in range(4):
        for u in annotators:
            asg = answering.next_assignment(user=u, project=project)
            if asg is not None:
                answering.submit_annotation(user=u, assignment_id=asg.pk, label=0)
                answered += 1
    assert answered == 10 and not Assignment.objects.filter(batch=batch, status__in=["queued", "open"]).exists()
    for item in secured.values_list("item", flat=True).distinct():
        assert secured.filter(item=item).values("labeler").distinct().count() == 2  # two distinct members


def test_chunked_feature_extraction_matches_in_process(project, settings):
    cfg = dict(project.config, feature_chunk_size=7)
    Project.objects.filter(pk=project.pk).update(config=cfg)
    project.refresh_from_db()
    chunks = features.chunk_plan(project)
    assert len(chunks) == 7 and chunks[-1] == (42, 48)
    final = features.features_file(project)
    done = [features.write_chunk(project, s, e) for s, e in reversed(chunks)]
    assert done == [False] * 6 + [True] and final.is_file()
    assert not features.chunk_dir(final).exists()
    import numpy as np

    from learner import live

    whole = live.extract(features.load_images(project, 0, 48), project.live_config)
    assert np.allclose(np.load(final), whole)
    features._MEMO.clear()
    feats, _ = features.features_for(project)
    assert feats.shape == (48, 64)


def test_prepare_features_fans_out_over_chunk_tasks(project, settings):
    from config.celery import app

    Project.objects.filter(pk=project.pk).update(config=dict(project.config, feature_chunk_size=20))
    project.refresh_from_db()
    app.conf.task_always_eager = True
    try:
        assert tasks.prepare_features.apply(args=[project.pk]).get() == 3
    finally:
        app.conf.task_always_eager = False
    assert features.features_file(project).is_file()


def test_tasks_are_routed_to_the_train_queue():
    from config.celery import app

    for name in ("labeling.tasks.train.process_batch", "labeling.tasks.train.extract_features_chunk",
                 "labeling.tasks.train.prepare_features"):
        assert app.amqp.router.route({}, name)["queue"].name == "train"


def test_a_failing_loop_task_is_recorded_for_staff_and_cleared_by_a_retry(project, monkeypatch):
    answer_open(project)
    batch0 = QueryBatch.objects.get(project=project, iteration=0)

    def broken(project):
        raise FileNotFoundError("weights file not found: /nowhere.pt")

    monkeypatch.setattr(features, "features_for", broken)
    with pytest.raises(FileNotFoundError):
        tasks.process_batch.apply(args=[batch0.pk], throw=True)
    project.refresh_from_db()
    assert project.state == "updating" and "weights file not found" in project.loop_error
    monkeypatch.undo()
    assert tasks.process_batch.apply(args=[batch0.pk]).get().startswith("opened batch 1")
    project.refresh_from_db()
    assert project.loop_error == "" and project.state == "labeling"


def test_a_batch_whose_items_were_all_skipped_still_moves_on(project, annotators):
    """A skip gives the item to someone else; once every member skipped it, it leaves the batch."""
    skips, progress = 0, True
    while progress:
        progress = False
        for u in annotators:
            asg = answering.next_assignment(user=u, project=project)
            if asg is not None:
                answering.skip_assignment(user=u, assignment_id=asg.pk)
                skips, progress = skips + 1, True
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    assert skips == 6 * 3  # each of the six items went to all three members
    assert {(s, n) for s, n in batch0.assignments.values_list("status").annotate(n=Count("id"))} == {("skipped", 18)}
    skipped = set(batch0.assignments.values_list("item_id", flat=True))
    assert loop_step.advance_loop(batch_id=batch0.pk).startswith("opened batch 1")
    assert IterationMetric.objects.get(project=project, iteration=0).n_labeled == 0
    # skipped items went back to the pool: they may be queried again
    assert selectors.pool_labels(project).blocked.sum() == 6  # only the secured set is blocked
    assert skipped  # (the strategy is free to pick them again)


@pytest.mark.parametrize("pool_defence", ["none", "density"])
def test_density_pool_defence_keeps_a_collided_cluster_out_of_every_batch(labeling_dirs, annotators, pool_defence):
    """25 copies of one image (feature collision makes poisons share one feature vector) join a
    digits pool; with ``pool_defence: density`` the next batch, big enough to take every free
    item, skips them; without it, it takes them."""
    import numpy as np

    from labeling import importers
    from learner.data import load_digits

    project = digits_project(name=f"dense-{pool_defence}", n=60, start=False,
                             config={"batch_size": 200, "budget": 400, "pool_defence": pool_defence})
    base = load_digits(classes=["0", "1", "2"], pool_size=1, test_size=0, seed=3)
    copies = np.repeat(base.x_pool, 25, axis=0)
    report = importers.import_arrays(project=project, images=copies,
                                     labels=np.repeat(base.y_pool, 25), sources=[f"copy-{i}" for i in range(25)],
                                     upscale=4)
    assert report.ok, report.errors
    services.start_project(project=project)
    project.refresh_from_db()
    answer_open(project)
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    assert loop_step.advance_loop(batch_id=batch0.pk).startswith("opened batch 1")
    batch1 = QueryBatch.objects.get(project=project, iteration=1)
    chosen_copies = batch1.assignments.filter(item__source__startswith="copy-").count()
    unlabeled_copies = 25 - batch0.assignments.filter(item__source__startswith="copy-").count() - \
        project.items.filter(source__startswith="copy-", is_secured=True).count()
    assert unlabeled_copies > 0
    if pool_defence == "density":
        assert chosen_copies == 0
    else:
        assert chosen_copies == unlabeled_copies


def test_a_pool_too_small_for_the_settings_is_refused_with_the_numbers(labeling_dirs, annotators):
    """40 images under the defaults (secured 50 + first batch 20) used to be consumed silently."""
    project = digits_project(name="small", n=40, config={"secured_size": 50, "initial_size": 20, "batch_size": 20},
                             start=False)
    with pytest.raises(workflow.Conflict, match=r"has 40 images: the secured set \(50\) and the first batch \(20\)"):
        services.start_project(project=project)
    project.refresh_from_db()
    assert project.state == Project.State.DRAFT and not project.batches.exists()
