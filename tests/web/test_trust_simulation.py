"""Eleven simulated labelers through the web services (``trust/simulation.py``): the rules must
flag and suspend the adversary quickly and spare the honest ones, and the web app and
``learner.loop`` (what ``simulate`` runs) must buy the same labels step by step (parity)."""
from __future__ import annotations

import numpy as np
import pytest

from labeling.models import LabelerProfile, Project
from tests.web.labeling_support import labeling_dirs  # noqa: F401
from trust import simulation
from labeling.models import ConfusionEstimate, TrustEvent

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_the_malicious_labeler_is_flagged_and_suspended_within_a_few_batches(labeling_dirs):
    # probation flags it at the first step (2 wrong labels), too early to suspend it; the second
    # flag does (batch 5)
    result = simulation.run(seed=0, max_batches=6)
    print(f"\ntrust simulation seed 0: malicious flagged after {result.malicious_flagged_after} batch(es), "
          f"{result.wrong_before_flag} wrong labels before; honest flagged {result.honest_flagged}/"
          f"{len(result.honest_ids)}; {result.labels_bought} labels; {result.seconds:.1f} s; reasons {result.reasons}")
    assert result.batches >= 2
    (bad,) = result.malicious_ids
    assert result.malicious_flagged_after is not None and result.malicious_flagged_after <= 3
    assert 0 < result.attacks_before_flag[bad] <= result.wrong_before_flag[bad]
    profile = LabelerProfile.objects.get(user_id=bad)
    assert profile.is_suspended
    # the flag is explained in the history, and its open work went to others
    assert TrustEvent.objects.filter(labeler_id=bad, reason="suspended").exclude(note="").exists()
    assert not profile.user.labeling_assignments.filter(status="open").exists()
    assert result.suggestions[bad] == "suspend"
    # Dawid-Skene sees the 1 -> 7 mapping (classes 1, 4, 7: indices 0 -> 2)
    est = ConfusionEstimate.objects.get(labeler_id=bad)
    honest = ConfusionEstimate.objects.filter(labeler_id__in=result.honest_ids)
    assert est.matrix[0][2] > max(e.matrix[0][2] for e in honest) + 0.3
    for uid in result.honest_ids:  # nobody honest is suspended
        assert not LabelerProfile.objects.get(user_id=uid).is_suspended


@pytest.mark.parametrize("reannotation,pipeline,per_annotator",
                         [("adaptive", False, None), ("parallel", False, None), ("adaptive", True, None),
                          ("adaptive", True, 4)], ids=["adaptive", "parallel", "pipeline", "pipeline-per-annotator"])
def test_parity_the_web_loop_and_the_simulator_buy_the_same_labels(labeling_dirs, reannotation, pipeline,
                                                                   per_annotator):
    """The same digits pool (the web project's own features), seeds, settings and labelers:
    the live services and ``learner.loop.run_loop`` buy the same labels after every step.

    ``pipeline``: the web labelers answer the younger batch before every loop step on the older
    one (as people do while the model trains); the simulator labels it after the step.
    ``per_annotator`` (``batch_per_annotator``): every eligible labeler answers in every batch, so
    the web app's count of members working (answered within the lease, not flagged) is the
    simulator's count of eligible labelers."""
    from labeling import features
    from learner.loop import LoopConfig, LoopData, run_loop
    from learner.oracles import LabelerPool

    web = simulation.run(seed=3, max_batches=50, config={"reannotation": reannotation, "budget": 300,
                                                         "pipeline": pipeline, "batch_per_annotator": per_annotator})
    # the shared queue handed every item to the labeler the engine planned (the simulator asks them)
    assert web.answers > 0 and web.off_plan == 0, (web.answers, web.off_plan)
    project = Project.objects.get(pk=web.project_id)
    feats, _ = features.features_for(project)
    truth = np.array(list(project.items.order_by("index").values_list("ground_truth", flat=True)))
    data = LoopData(pool_features=feats, pool_labels=truth, test_features=feats[:10], test_labels=truth[:10],
                    n_classes=3)
    cfg = LoopConfig(strategy="robust", batch_size=30, initial_size=30, secured_size=30, n_clusters=5,
                     reannotation=reannotation, budget=300, pipeline=pipeline, batch_per_annotator=per_annotator)
    sim = run_loop(data, cfg, LabelerPool.build(3, n_labelers=11, n_malicious=1, mapping={0: 2}), seed=3)
    bought = [h.labels_bought for h in sim.history]
    print(f"\nparity ({reannotation}{', pipeline' if pipeline else ''}"
          f"{f', {per_annotator} per annotator' if per_annotator else ''}): web {web.bought_per_iteration} / "
          f"simulator {bought}")
    assert web.bought_per_iteration == bought
    # rounds whose votes split asked more voters (escalate_votes) in both drivers alike
    from django.db.models import Count
    from labeling.models import ReannotationRound

    escalated = (ReannotationRound.objects.filter(project=project).annotate(n=Count("assignments"))
                 .filter(n__gt=3).count())  # h = 3
    print(f"rounds with more than h voters: {escalated}")
    assert escalated > 0
    sizes = [b.assignments.filter(kind="first_label").exclude(status="skipped").count()
             for b in project.batches.order_by("iteration")]
    print(f"first labels per batch: {sizes}")
    if per_annotator:  # the batches the steps opened follow the people working (11 x 4, 10 x 4 once one is blocked)
        assert 44 in sizes and set(sizes[2:-1]) <= {40, 44}, sizes
    else:
        assert set(sizes[:-1]) == {30}, sizes
    # the same verdicts on the same people (web ids in creation order = simulator ids)
    order = sorted(web.malicious_ids + web.honest_ids)
    web_status = {order.index(p.user_id): ("suspended" if p.is_suspended else "flagged" if p.is_flagged else "active")
                  for p in LabelerProfile.objects.filter(user_id__in=order)}
    assert {i: s for i, s in web_status.items() if s != "active"} == {
        i: t["status"] for i, t in sim.trust.items() if t["status"] != "active"}


def test_the_harness_tells_a_sleepers_attacks_from_its_honest_slips():
    """``wrong_attacks`` counts the wrong first labels given in attack (after a sleeper turns);
    ``wrong_first`` every wrong first label, honest slips included; re-annotations count in neither."""
    from learner.oracles import LabelerPool

    pool = LabelerPool.build(2, n_labelers=2, error_rate=0.5, n_malicious=1, mapping={0: 1}, kind="sleeper")
    asker = simulation._Asker(pool, seed=0)
    sleeper, honest = 1, 0
    turn = pool.labelers[sleeper].honest_first
    for item in range(turn):
        asker(sleeper, item, 0, True)
    slips = asker.wrong_first[sleeper]
    assert slips > 0 and asker.wrong_attacks[sleeper] == 0  # error rate 0.5: some slips, no attack yet
    asker(sleeper, 999, 0, False)  # a re-annotation: honest, never counted
    for item in range(turn, turn + 4):
        assert asker(sleeper, item, 0, True) == 1  # mapped
    assert asker.wrong_attacks[sleeper] == 4 and asker.wrong_first[sleeper] == slips + 4
    for item in range(20):
        asker(honest, item, 0, True)
    assert asker.wrong_first[honest] > 0 and asker.wrong_attacks[honest] == 0
