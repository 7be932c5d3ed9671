"""training_mode "finetune" in the live loop: each closed iteration fine-tunes the backbone's last
stage (learner.finetune, the code simulate --training-mode finetune runs), keeps it and the pool's
new features next to the project's feature cache, and the next step starts from them."""
from __future__ import annotations

import numpy as np
import pytest

from labeling import features, loop_step
from labeling.models import IterationMetric, Project, QueryBatch
from learner import live
from tests.web.labeling_support import annotators, answer_open, digits_project, finish_batch, labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db

CONFIG = {"backbone": "smallcnn", "training_mode": "finetune", "augment_space": "pixel", "noise_variance": 0.01}


def test_live_finetune_steps_keep_the_stage_and_a_redelivered_step_writes_the_same(labeling_dirs, annotators):
    project = digits_project(config=CONFIG)
    frozen, _ = features.features_for(project)
    answer_open(project)
    assert finish_batch(project, QueryBatch.objects.get(project=project, iteration=0)).startswith("opened batch 1")
    assert features.stage_inputs_file(project).is_file()
    tuned0 = np.load(features.finetune_features_path(project, 0))
    assert features.finetune_path(project, 0).is_file()
    assert tuned0.shape == frozen.shape and np.abs(tuned0 - frozen).max() > 1e-4  # the stage learned
    # the saved head is the one trained on the fine-tuned features
    head0 = live.load_model(features.model_path(project, 0))
    np.testing.assert_allclose(head0.mean, tuned0.mean(axis=0), rtol=1e-4, atol=1e-5)

    answer_open(project)
    batch1 = QueryBatch.objects.get(project=project, iteration=1)
    # a first try of the step that fine-tunes and saves, then dies before persisting its plan
    snap = loop_step._take_snapshot(batch1.pk)
    plan = loop_step._plan(snap)
    while not plan.closed:  # re-annotation rounds: answer them and go on
        loop_step._persist(snap, plan)
        answer_open(project)
        snap = loop_step._take_snapshot(batch1.pk)
        plan = loop_step._plan(snap)
    first = np.load(features.finetune_features_path(project, 1))
    assert np.abs(first - tuned0).max() > 1e-5  # iteration 1 went on from iteration 0's stage
    # the redelivered task computes the same stage from the same state and persists the plan
    outcome = loop_step.advance_loop(batch_id=batch1.pk)
    assert outcome.startswith(("opened batch 2", "finished")), outcome
    np.testing.assert_array_equal(np.load(features.finetune_features_path(project, 1)), first)
    metric = IterationMetric.objects.get(project=project, iteration=1)
    assert metric.n_artificial > 0  # pixel-space copies through the fine-tuned stage
    assert metric.ground_truth_accuracy is not None


def test_finetune_is_refused_for_a_backbone_without_a_stage(labeling_dirs, annotators):
    from labeling import services

    with pytest.raises(Exception, match="trainable last stage"):
        services.create_project(name="flat", classes=["0", "1"], config={"training_mode": "finetune"})
    assert not Project.objects.filter(name="flat").exists()


def test_the_feature_chunk_tasks_also_write_the_stage_inputs_of_a_finetune_project(labeling_dirs, annotators):
    from learner.finetune import stage_inputs

    project = digits_project(config={**CONFIG, "feature_chunk_size": 20}, start=False)
    chunks = features.chunk_plan(project)
    assert len(chunks) == 3
    for start, stop in chunks:  # what the extract_features_chunk tasks run, one chunk each
        features.write_chunk(project, start, stop)
    assert features.features_file(project).is_file() and features.stage_inputs_file(project).is_file()
    direct = stage_inputs(live.project_backbone(project.live_config), features.load_images(project, 0, 48))
    np.testing.assert_allclose(features.stage_inputs_for(project), direct, rtol=0, atol=1e-6)


def _moved_tuner(project):
    """A FineTuner over the project's stage inputs whose stage is no longer the backbone's own."""
    import torch

    from learner.finetune import FineTuner

    tuner = FineTuner(live.project_backbone(project.live_config), features.stage_inputs_for(project), device="cpu")
    labels = np.array([i % project.n_classes for i in range(12)])
    assert tuner.fit(np.arange(12), labels, np.ones(12), project.n_classes, seed=3)
    with torch.no_grad():  # and make sure it moved, whatever the fit did
        next(tuner.stage.parameters()).mul_(1.01)
    return tuner


def test_chunked_reextraction_after_a_refit_equals_the_in_process_one(labeling_dirs, annotators, monkeypatch):
    """features.reextract: chunks written by train workers, one claimed by a worker that died, and the
    rest computed by the loop give the same rows as FineTuner.features() in one process; the stage is
    saved first, the chunk folder removed, and a late or stale task does nothing."""
    import torch

    from learner.finetune import stage_hash

    project = digits_project(config={**CONFIG, "feature_chunk_size": 10}, start=False)
    plan = features.chunk_plan(project)
    assert len(plan) == 5
    tuner = _moved_tuner(project)
    direct = tuner.features()
    digest = stage_hash(tuner.state_dict())
    sent = []

    def workers(project_, iteration, digest_, chunks):  # what the chunk tasks would do, before the loop looks
        sent.append((iteration, digest_, list(chunks)))
        saved = torch.load(features.finetune_path(project_, iteration), weights_only=True)
        assert stage_hash(saved) == digest_  # the stage is on disk before any task runs
        assert features.write_refit_chunk(project_, iteration, "0" * 64, *plan[0]) is False  # another stage
        assert features.write_refit_chunk(project_, iteration, digest_, *plan[0]) is True
        assert features.write_refit_chunk(project_, iteration, digest_, *plan[0]) is False  # claimed/written
        assert features.write_refit_chunk(project_, iteration, digest_, *plan[2]) is True
        folder = features.refit_chunk_dir(project_, iteration, digest_)
        (folder / f"{features._chunk_name(*plan[1])}.claim").touch()  # a worker that died mid-chunk

    monkeypatch.setattr(features, "_send_refit_chunks", workers)
    monkeypatch.setattr(features, "STALE_CLAIM_S", 0.3)
    stale = features.project_cache_dir(project) / "finetune-chunks-0-deadbeefdeadbeef"
    stale.mkdir(parents=True)
    chunked = features.reextract(project, tuner, 1)
    assert sent == [(1, digest, plan)]
    assert chunked.dtype == np.float32 and chunked.shape == direct.shape
    np.testing.assert_allclose(chunked, direct, rtol=0, atol=1e-6)  # bitwise equal on this CPU (checked)
    assert not features.refit_chunk_dir(project, 1, digest).exists() and not stale.exists()
    assert features.write_refit_chunk(project, 1, digest, *plan[3]) is False  # a late task: assembled already
    assert not features.refit_chunk_dir(project, 1, digest).exists()

    # without workers (tasks sent nowhere, or dispatch off) the loop computes every chunk itself
    monkeypatch.setattr(features, "_send_refit_chunks", lambda *a: None)
    np.testing.assert_allclose(features.reextract(project, tuner, 1), direct, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(features.reextract(project, tuner, 1, dispatch=False), direct)


def test_the_reextraction_chunk_task_through_celery(labeling_dirs, annotators, settings):
    """The task itself (run eagerly here): each chunk task writes its chunk once, then is a no-op."""
    from labeling import tasks
    from learner.finetune import stage_hash

    project = digits_project(config={**CONFIG, "feature_chunk_size": 20}, start=False)
    tuner = _moved_tuner(project)
    live.save_state_dict(features.finetune_path(project, 2), tuner.state_dict())
    digest = stage_hash(tuner.state_dict())
    folder = features.refit_chunk_dir(project, 2, digest)
    folder.mkdir(parents=True)
    for start, stop in features.chunk_plan(project):
        assert tasks.reextract_finetune_chunk.apply(args=[project.pk, 2, digest, start, stop]).get() is True
        assert tasks.reextract_finetune_chunk.apply(args=[project.pk, 2, digest, start, stop]).get() is False
    rows = np.concatenate([np.load(folder / f"{features._chunk_name(s, e)}.npy") for s, e in features.chunk_plan(project)])
    np.testing.assert_allclose(rows, tuner.features(), rtol=0, atol=1e-6)
