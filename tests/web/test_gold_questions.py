"""Gold questions (LiveConfig.gold_per_labeler): items of the secured set whose label the admin
gave, asked of the annotators among the first batch's first labels, bought like any label, and a
wrong answer counts against whoever gave it from the first loop step on."""
from __future__ import annotations

import pytest

from labeling import answering, loop_step, selectors
from labeling.models import Assignment, LabelerProfile
from tests.web.labeling_support import annotators, digits_project, finish_batch, labeling_dirs, take_turns  # noqa: F401

pytestmark = pytest.mark.django_db


def test_the_first_batch_asks_gold_questions_among_its_first_labels(labeling_dirs, annotators):
    project = digits_project(config={"gold_per_labeler": 2})
    batch = selectors.open_batch(project)
    slots = list(Assignment.objects.filter(batch=batch).order_by("id").select_related("item"))
    gold = [a for a in slots if a.kind == Assignment.Kind.SECURED]
    assert len(gold) == 2 * len(annotators)
    assert all(a.item.is_secured and a.item.ground_truth is not None for a in gold)
    kinds = "".join("g" if a.kind == Assignment.Kind.SECURED else "f" for a in slots)
    assert kinds[0] == "f" and "ggg" not in kinds  # spread among the first labels

    wrong, bought_before = annotators[2], selectors.labels_bought(project)
    answered = 0
    for user, asg in take_turns(project):
        truth = int(asg.item.ground_truth)
        liar = user.pk == wrong.pk and asg.kind == Assignment.Kind.SECURED
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=(truth + 1) % 3 if liar else truth)
        answered += 1
    assert selectors.labels_bought(project) - bought_before == answered == len(slots)  # gold is bought
    state, _ = loop_step.engine_state(project, batch)
    history = state.gold_history()
    liar_answers = history.get(wrong.pk, [])
    assert liar_answers and all(given != truth for given, truth in liar_answers)
    assert all(given == truth for uid, rows in history.items() if uid != wrong.pk for given, truth in rows)
    # the gold items keep the admin's label (the answers never change S)
    assert all(state.secured_labels[i] == state_truth for i, state_truth in
               ((a.item.index, a.item.ground_truth) for a in gold))


def test_gold_answers_flag_a_labeler_who_gets_them_wrong(labeling_dirs, annotators):
    """Four gold questions each, all answered wrongly by one annotator (right elsewhere): the first
    loop step flags them, the others stay active."""
    project = digits_project(config={"gold_per_labeler": 4})
    batch = selectors.open_batch(project)
    liar, liar_gold = None, 0  # whoever is handed the first gold question
    for user, asg in take_turns(project):
        if liar is None and asg.kind == Assignment.Kind.SECURED:
            liar = user
        bad = liar is not None and user.pk == liar.pk and asg.kind == Assignment.Kind.SECURED
        liar_gold += int(bad)
        truth = int(asg.item.ground_truth)
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=(truth + 1) % 3 if bad else truth)
    finish_batch(project, batch)  # the first step, its audits answered truthfully
    assert liar_gold >= 3
    profiles = {p.user_id: p for p in LabelerProfile.objects.filter(user__in=annotators)}
    assert profiles[liar.pk].is_flagged or profiles[liar.pk].is_suspended
    assert not any(profiles[u.pk].is_flagged or profiles[u.pk].is_suspended for u in annotators if u.pk != liar.pk)
