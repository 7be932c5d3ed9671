"""Pixel-space augmentation in the live loop (``augment_space = "pixel"``): the web driver crafts
C&W / DeepFool / noise copies of the new labels' images through the project's backbone and the
current head with :func:`learner.augment.pixel_crafter`, the function ``simulate --augment-space
pixel`` uses, and stores their features as the iteration's artificial rows."""
from __future__ import annotations

import numpy as np
import pytest

from labeling import features
from labeling.models import IterationMetric, QueryBatch
from learner import live
from learner.augment import PixelSettings, pixel_crafter
from tests.web.labeling_support import annotators, answer_open, digits_project, finish_batch, labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db


def test_a_live_step_with_pixel_space_crafting_stores_the_crafted_rows(labeling_dirs, annotators):
    project = digits_project(config={"augment_space": "pixel", "noise_variance": 0.01})
    answer_open(project)
    assert finish_batch(project, QueryBatch.objects.get(project=project, iteration=0)).startswith("opened batch 1")
    # iteration 0 has no model to attack yet (as in simulate): nothing crafted
    assert not live.load_artificial([features.artificial_path(project, 0)])
    answer_open(project)
    batch1 = QueryBatch.objects.get(project=project, iteration=1)
    outcome = finish_batch(project, batch1)
    assert outcome.startswith(("opened batch 2", "finished")), outcome
    rows = live.load_artificial([features.artificial_path(project, 1)])
    batch1.refresh_from_db()
    perts = {int(k): v for k, v in batch1.loop_state["perturbations"].items()}
    assert rows and set(rows) <= set(perts)
    metric = IterationMetric.objects.get(project=project, iteration=1)
    assert metric.n_artificial >= sum(len(r) for r in rows.values()) > 0
    assert metric.min_perturbation is not None and metric.min_perturbation > 0
    attacked = sum(1 for v in perts.values() if v != 0)  # 0: the model already got the item wrong
    # each attacked item got 2 attacks; the ones kept are rows besides the noise copy
    kept = sum(len(r) - 1 for r in rows.values())
    assert metric.craft_failed == 2 * attacked - kept

    # the same function, run here on F_0 and the batch's images, gives the stored rows
    from learner import engine

    cfg = project.live_config
    items = np.array(sorted(perts), dtype=np.int64)
    truth = dict(project.items.filter(index__in=items).values_list("index", "ground_truth"))
    labels = np.array([truth[int(i)] for i in items])  # the annotators answered truthfully
    craft = pixel_crafter(lambda idx: features.load_items(project, idx), live.project_backbone(cfg),
                          PixelSettings(tuple(cfg.augmentations), cfg.noise_variance))
    again, again_perts, again_failed = craft(live.load_model(features.model_path(project, 0)), items, labels,
                                             engine.seed_of(cfg, 1, 3))
    assert again_failed == metric.craft_failed
    assert sorted(again) == sorted(rows)
    for k in rows:
        np.testing.assert_allclose(again[k], rows[k], rtol=0, atol=1e-6)
    for k, v in perts.items():  # stored None: no attack flipped the item
        assert np.isinf(again_perts[k]) if v is None else abs(again_perts[k] - v) < 1e-9


def test_load_items_reads_the_images_the_features_were_computed_from(labeling_dirs, annotators):
    project = digits_project(start=False)
    dense = features.load_images(project, 0, 10)
    picked = features.load_items(project, [7, 2, 9])
    np.testing.assert_array_equal(picked, dense[[7, 2, 9]])
    with pytest.raises(ValueError, match="no items with index"):
        features.load_items(project, [10_000])


def test_parity_pixel_space_the_web_loop_and_simulate_craft_and_buy_the_same(labeling_dirs):
    """``simulate --augment-space pixel`` and a live project with ``augment_space = "pixel"``: the
    same pool (the project's images and backbone), seeds, settings and labelers give the same
    labels bought, crafted rows and failed attacks after every step."""
    from labeling.models import Project
    from learner.loop import LoopConfig, LoopData, run_loop
    from learner.oracles import LabelerPool
    from trust import simulation

    web = simulation.run(seed=3, max_batches=50, config={"augment_space": "pixel", "budget": 200})
    assert web.answers > 0 and web.off_plan == 0
    project = Project.objects.get(pk=web.project_id)
    feats, _ = features.features_for(project)
    n = len(feats)
    truth = np.array(list(project.items.order_by("index").values_list("ground_truth", flat=True)))
    data = LoopData(pool_features=feats, pool_labels=truth, test_features=feats[:10], test_labels=truth[:10],
                    n_classes=3, pool_images=features.load_images(project, 0, n),
                    backbone=live.project_backbone(project.live_config))
    cfg = LoopConfig(strategy="robust", batch_size=30, initial_size=30, secured_size=30, n_clusters=5, budget=200,
                     augment_space="pixel")
    sim = run_loop(data, cfg, LabelerPool.build(3, n_labelers=11, n_malicious=1, mapping={0: 2}), seed=3)
    metrics = list(IterationMetric.objects.filter(project=project).order_by("iteration"))
    got = [(m.labels_bought, m.n_artificial, m.craft_failed) for m in metrics]
    want = [(h.labels_bought, h.n_artificial, h.craft_failed) for h in sim.history]
    print(f"\npixel parity (bought, artificial, failed): web {got} / simulator {want}")
    assert got == want
    assert got[-1][1] > 0
