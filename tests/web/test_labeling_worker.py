"""The whole live loop with a real Celery worker process on real Redis.

Annotators answer through the API in this process; the last answer of a batch enqueues the loop
task on commit; the worker (a subprocess on the same test database, media and cache folders)
trains, crafts pixel-space copies of the new labels, checks, re-annotates when needed and opens the
next batch. A redelivered task is a no-op.
"""
from __future__ import annotations

from contextlib import contextmanager

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from labeling import tasks
from labeling.models import Assignment, IterationMetric, Project, QueryBatch
from tests.web.conftest import wait_until
from tests.web.labeling_support import annotators, digits_project, labeling_dirs  # noqa: F401

pytestmark = pytest.mark.slow


@contextmanager
def producer_to(worker):
    """Make this process's Celery producer publish to the worker's broker (whatever settings say)."""
    from config.celery import app

    def reset():
        from kombu import pools

        if app._pool is not None:
            app._pool.force_close_all()
            app._pool = None
        app.amqp._producer_pool = None
        pools.reset()  # kombu's global producer pools keep the closed connection pool otherwise

    saved = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url, app.conf.broker_transport_options = worker.broker_url, worker.transport_options
    reset()
    try:
        yield
    finally:
        app.conf.broker_url, app.conf.broker_transport_options = saved
        reset()


def answer_batch(project, *, wrong_for=()) -> int:
    """The members take turns asking the API for work (next/) and answering it, until nobody gets any."""
    from labeling import selectors

    users = list(get_user_model().objects.filter(pk__in=selectors.member_ids(project)).order_by("id"))
    n, progress = 0, True
    while progress:
        progress = False
        for user in users:
            api = APIClient()
            api.force_authenticate(user)
            got = api.get(f"/api/labeling/next/?project={project.pk}").json()["assignment"]
            if got is None:
                continue
            label = Assignment.objects.select_related("item").get(pk=got["id"]).item.ground_truth
            if user.username in wrong_for:
                label = (label + 1) % project.n_classes
            r = api.post(f"/api/labeling/assignments/{got['id']}/annotation/", {"label": label, "seconds": 1},
                         format="json")
            assert r.status_code == 201, r.content
            n, progress = n + 1, True
    return n


def labeling_again(project, iteration):
    def check():
        project.refresh_from_db()
        return project.state in ("labeling", "finished") and (
            project.iteration > iteration or project.state == "finished"
            or QueryBatch.objects.filter(project=project, iteration=iteration, phase="reannotation").exists()
            and Assignment.objects.filter(batch__project=project, status="queued").exists())
    return check


def test_live_loop_on_a_real_worker_over_redis(labeling_dirs, annotators, redis_worker):
    with producer_to(redis_worker):
        # pixel-space crafting (issue 19): the worker crafts C&W / DeepFool / noise on the images
        project = digits_project(n=36, config={"secured_size": 6, "initial_size": 6, "batch_size": 6, "budget": 40,
                                               "augment_space": "pixel"})
        iteration = 0
        for _ in range(8):  # batches and re-annotation rounds until batch 3 is open (or the budget ends it)
            answer_batch(project, wrong_for=("ann_a",) if iteration == 1 else ())
            wait_until(labeling_again(project, iteration), timeout=90, worker=redis_worker)
            iteration = project.iteration
            if iteration >= 3 or project.state == "finished":
                break
        assert iteration >= 3 or project.state == Project.State.FINISHED
        metrics = list(IterationMetric.objects.filter(project=project).order_by("iteration"))
        assert [m.iteration for m in metrics][:3] == [0, 1, 2]
        assert all(m.secured_accuracy is not None for m in metrics)
        assert metrics[-1].labels_bought > metrics[0].labels_bought
        assert metrics[1].n_artificial > 0  # crafted from the images by the worker (iteration 0 has no model)
        assert "device: cpu" in redis_worker.log() or "device: cuda" in redis_worker.log()
        assert "labeling.tasks.train.process_batch" in redis_worker.log()
        # the worker also built the feature cache through the chunk tasks or the loop itself
        from labeling import features

        assert features.features_file(project).is_file()

        # a redelivered loop task for an old batch changes nothing
        n_batches = QueryBatch.objects.filter(project=project).count()
        batch0 = QueryBatch.objects.get(project=project, iteration=0)
        with redis_worker.connection() as conn:
            tasks.process_batch.apply_async(args=[batch0.pk], connection=conn)
        wait_until(lambda: f"process_batch({batch0.pk}): noop" in redis_worker.log(), timeout=60, worker=redis_worker)
        assert QueryBatch.objects.filter(project=project).count() == n_batches
        assert IterationMetric.objects.filter(project=project, iteration=0).count() == 1


def test_a_finetune_step_with_pixel_crafting_on_a_real_worker_over_redis(labeling_dirs, annotators, redis_worker,
                                                                         tmp_path, request):
    """training_mode finetune (issue 19): the worker fine-tunes the backbone's last stage on the
    device learner.device picks, crafts pixel-space copies through it, and keeps the stage; the
    pool's features through each new stage are re-extracted in chunks (feature_chunk_size 10: three
    chunk tasks on the train queue, a second worker to take them, the loop assembles) and equal
    what the saved stage gives in one process."""
    from labeling import features
    from tests.web.conftest import start_worker

    (tmp_path / "second").mkdir()
    second = start_worker(broker_url=redis_worker.broker_url, transport_options={}, env_extra={},
                          tmp_path=tmp_path / "second", queues="train")
    request.addfinalizer(second.stop)
    with producer_to(redis_worker):
        project = digits_project(n=30, config={"secured_size": 6, "initial_size": 6, "batch_size": 6, "budget": 40,
                                               "backbone": "smallcnn", "training_mode": "finetune",
                                               "augment_space": "pixel", "noise_variance": 0.01,
                                               "feature_chunk_size": 10})
        iteration = 0
        for _ in range(6):  # batch 0 (no model to attack yet), then batch 1: crafted and fine-tuned
            answer_batch(project)
            wait_until(labeling_again(project, iteration), timeout=120, worker=redis_worker)
            iteration = project.iteration
            if iteration >= 2 or project.state == "finished":
                break
        assert iteration >= 2, (project.state, project.stop_reason, redis_worker.log()[-3000:])
        metric = IterationMetric.objects.get(project=project, iteration=1)
        assert metric.n_artificial > 0  # crafted from the images through the fine-tuned stage
        for i in (0, 1):
            assert features.finetune_path(project, i).is_file()
            assert features.finetune_features_path(project, i).is_file()
        frozen = features.features_for(project)[0]
        import numpy as np

        assert np.abs(np.load(features.finetune_features_path(project, 1)) - frozen).max() > 1e-4
        log = redis_worker.log() + second.log()
        assert "finetune on cpu" in log or "finetune on cuda" in log
        # chunked re-extraction: the loop said how it went, and its rows are the saved stage's features
        assert "re-extracted 3 chunks" in log, log[-3000:]
        import torch

        from learner import live
        from learner.finetune import FineTuner

        tuner = FineTuner(live.project_backbone(project.live_config), features.stage_inputs_for(project), device="cpu")
        for i in (0, 1):
            tuner.load_state_dict(torch.load(features.finetune_path(project, i), weights_only=True))
            np.testing.assert_allclose(np.load(features.finetune_features_path(project, i)), tuner.features(),
                                       rtol=0, atol=1e-5)
        # every chunk task ran (on either worker) and left no chunk folder behind
        wait_until(lambda: (redis_worker.log() + second.log()).count("reextract_finetune_chunk(") >= 6, timeout=60,
                   worker=redis_worker)
        assert not list(features.project_cache_dir(project).glob("finetune-chunks-*"))
