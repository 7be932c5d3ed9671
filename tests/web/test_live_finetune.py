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
