"""The loop engine on its own: arrays in, a plan out (no database)."""
from __future__ import annotations

import numpy as np
import pytest

from learner import engine, live
from learner.heads import fit_standardizer
from learner.loop import LoopConfig, LoopData, run_loop
from learner.oracles import LabelerPool
from learner.trust import LabelerTrust, Status


@pytest.fixture()
def setup(digits):
    x, y, _, _ = digits
    pool = engine.Pool(features=x, n_classes=10, standardizer=fit_standardizer(x))
    return x, y, pool


def _state(y, crowd=range(11)):
    n = len(y)
    return engine.EngineState(labels=np.full(n, -1), labeler_of=np.full(n, -1), discarded=np.zeros(n, bool),
                              secured=np.zeros(n, bool), secured_labels=np.full(n, -1),
                              trust={u: LabelerTrust() for u in crowd}, crowd=list(crowd))


def _batch_with_wrong_labels(cfg, pool, y, wrong: int):
    """F_0 trained on 300 true labels; a batch of 40 from labeler 0 whose first ``wrong`` are wrong."""
    state = _state(y)
    state.labels[:300] = y[:300]
    previous = live.train_model(pool.features, state.labels, state.weights(), 10, standardizer=pool.standardizer)
    batch = np.arange(300, 340)
    given = y[batch].copy()
    given[:wrong] = (given[:wrong] + 1) % 10
    state.labels[batch], state.labeler_of[batch], state.batch = given, 0, batch
    state.first_labels[0] = [(int(i), int(g)) for i, g in zip(batch, given)]
    state.iteration = 1
    return state, previous


@pytest.mark.parametrize("mode,first_votes", [("adaptive", 1), ("parallel", 3)])
def test_rounds_ask_one_labeler_first_or_h_at_once(setup, mode, first_votes):
    x, y, pool = setup
    cfg = live.LiveConfig(h=3, reannotation=mode, augment=(), secured_size=0)
    state, previous = _batch_with_wrong_labels(cfg, pool, y, wrong=2)  # two slips: no flag
    plan = engine.step(cfg, pool, state, previous_model=previous)
    assert not plan.closed and plan.requests
    assert all(len(r.new_voters) == first_votes and 0 not in r.new_voters for r in plan.requests)
    wrong_items = {300, 301}
    assert wrong_items <= {r.item for r in plan.requests}  # every wrong label is audited
    for r in plan.requests:  # the re-annotators tell the truth
        r.votes += [int(y[r.item])] * len(r.new_voters)
    plan = engine.step(cfg, pool, state, previous_model=previous)
    if mode == "adaptive":  # the refuted ones need the other h - 1; the confirmed ones are settled
        assert {r.item for r in plan.requests} == wrong_items
        assert all(len(r.new_voters) == 2 and len(set(r.asked)) == 3 for r in plan.requests)
        for r in plan.requests:
            r.votes += [int(y[r.item])] * len(r.new_voters)
        plan = engine.step(cfg, pool, state, previous_model=previous)
    assert plan.closed
    assert (state.labels[300:302] == y[300:302]).all() and (state.labeler_of[300:302] == -1).all()
    assert {(0, i) for i in wrong_items} <= set(state.verdicts)
    assert state.trust[0].disagreements == 2 and state.trust[0].status is Status.ACTIVE


def _probation_state(pool, y):
    """Labeler 0 gives 40 right labels (300-339) with nothing confirmed yet; labeler 1 gives 10
    (340-349) after 4 earlier labels (200-203) that re-annotation confirmed."""
    state, previous = _batch_with_wrong_labels(live.LiveConfig(), pool, y, wrong=0)
    state.labels[200:204] = y[200:204]  # verified by the rounds: no longer on anyone's word
    state.first_labels[1] = [(i, int(y[i])) for i in range(200, 204)] + [(i, int(y[i])) for i in range(340, 350)]
    state.verdicts.update({(1, i): int(y[i]) for i in range(200, 204)})
    state.labels[340:350], state.labeler_of[340:350] = y[340:350], 1
    state.batch = np.arange(300, 350)
    return state, previous


def test_probation_re_annotates_every_label_until_enough_were_confirmed(setup):
    x, y, pool = setup
    state, previous = _probation_state(pool, y)
    assert engine.on_probation(state, state.batch, 4).tolist() == list(range(300, 340))  # 1 has 4 confirmed
    assert engine.on_probation(state, state.batch, 5).tolist() == list(range(300, 350))
    state.verdicts[(0, 300)] = int(y[300]) + 1  # a refuted label confirms nothing
    assert engine.on_probation(state, state.batch, 1).tolist() == list(range(300, 340))
    asked = {}
    for probation in (0, 4):
        s, _ = _probation_state(pool, y)
        cfg = live.LiveConfig(h=3, augment=(), secured_size=0, probation_labels=probation, recheck=False)
        plan = engine.step(cfg, pool, s, previous_model=previous)
        asked[probation] = {r.item for r in plan.requests}
        assert all(len(r.new_voters) == 1 for r in plan.requests)  # one vote first: a confirmation costs one label
    assert len(asked[0]) < 8  # the model contradicts few of these right labels...
    assert asked[4] == asked[0] | set(range(300, 340))  # ...probation checks all of labeler 0's anyway
    with pytest.raises(ValueError, match="probation_labels"):
        live.LiveConfig(probation_labels=-1).validate()


def test_verify_labels_asks_a_second_opinion_on_every_first_label(setup):
    """verify_labels: every first label of the batch is re-annotated (one vote first), whatever the
    model or the labeler's record says; off, only the model's contradictions and probation are."""
    x, y, pool = setup
    asked = {}
    for verify in (False, True):
        state, previous = _probation_state(pool, y)  # labeler 1 is past probation
        cfg = live.LiveConfig(h=3, augment=(), secured_size=0, recheck=False, verify_labels=verify)
        plan = engine.step(cfg, pool, state, previous_model=previous)
        asked[verify] = {r.item for r in plan.requests}
        assert all(len(r.new_voters) == 1 for r in plan.requests)
    assert not set(range(340, 350)) <= asked[False]  # labeler 1's right labels mostly stand...
    assert asked[True] == set(range(300, 350))  # ...unless every label gets a second opinion
    with pytest.raises(ValueError, match="verify_labels"):
        live.LiveConfig(verify_labels="yes").validate()


def test_a_flagged_labeler_is_audited_then_suspended_and_its_labels_leave(setup):
    x, y, pool = setup
    cfg = live.LiveConfig(h=3, augment=(), secured_size=0, confusion_min_rate=None)
    # 20 of 40 wrong: implausible even for someone erring twice as often as P_1 allows (a
    # suspension's standard); 12 of 40 only flags and audits (learner.trust, suspend_error_factor)
    state, previous = _batch_with_wrong_labels(cfg, pool, y, wrong=20)
    plan = engine.step(cfg, pool, state, previous_model=previous)
    for _ in range(6):
        if plan.closed:
            break
        for r in plan.requests:
            r.votes += [int(y[r.item])] * len(r.new_voters)
        plan = engine.step(cfg, pool, state, previous_model=previous)
    assert plan.closed
    assert state.trust[0].status is Status.SUSPENDED
    assert not (state.labeler_of == 0).any()  # nothing stands on its word any more
    reasons = [e["reason"] for e in plan.events if e["labeler"] == 0]
    assert "suspended" in reasons or any(e["reason"] == "flagged" for e in plan.events)
    assert 0 not in plan.assignees  # no new work


def test_every_strategy_starts_from_the_same_labels():
    cfg = dict(secured_size=50, initial_size=20, seed=3)
    robust = engine.start(live.LiveConfig(strategy="robust", **cfg), 500, label_known=np.ones(500, bool),
                          crowd=list(range(11)))
    margin = engine.start(live.LiveConfig(strategy="margin", **cfg), 500, label_known=np.ones(500, bool),
                          crowd=list(range(11)), buy_secured=False)
    defended = engine.start(live.LiveConfig(strategy="margin", defenses=True, **cfg), 500,
                            label_known=np.ones(500, bool), crowd=list(range(11)))
    np.testing.assert_array_equal(robust.initial, margin.initial)
    np.testing.assert_array_equal(robust.initial, defended.initial)
    assert robust.assignees == margin.assignees
    assert len(robust.secured) == 50 and len(margin.secured) == 0 and len(defended.secured) == 50
    assert not set(robust.initial) & set(robust.secured)


def test_gold_questions_ask_every_labeler_known_secured_items_spread_among_the_first_labels():
    cfg = live.LiveConfig(strategy="robust", secured_size=50, initial_size=20, seed=3, budget=200, gold_per_labeler=2)
    known = np.ones(500, bool)
    plan = engine.start(cfg, 500, label_known=known, crowd=list(range(11)))
    assert len(plan.gold) == 22 and {u for _, u in plan.gold} == set(range(11))
    for uid in range(11):
        mine = [i for i, u in plan.gold if u == uid]
        assert len(set(mine)) == 2 and set(mine) <= set(plan.secured.tolist())
    queue = engine.start_queue(plan)
    kinds = "".join("g" if k == "gold" else "f" for k, _, _ in queue)
    assert kinds.count("g") == 22 and kinds.count("f") == 20 and "ggg" not in kinds  # spread, not bunched
    assert [i for k, i, _ in queue if k == "first"] == plan.initial.tolist()
    # gold is bought: with a budget of 200 the secured set (50) and gold (22) leave the first batch its 20
    tight = engine.start(live.LiveConfig(strategy="robust", secured_size=50, initial_size=20, seed=3, budget=80,
                                         gold_per_labeler=2),
                         500, label_known=known, crowd=list(range(11)))
    assert len(tight.initial) == 80 - 50 - 22
    off = engine.start(live.LiveConfig(strategy="robust", secured_size=50, initial_size=20, seed=3),  # the default
                       500, label_known=known, crowd=list(range(11)))
    assert off.gold == [] and off.initial.tolist() == plan.initial.tolist()
    consensus = engine.start(cfg, 500, label_known=np.zeros(500, bool), crowd=list(range(11)))
    assert consensus.gold == []  # no item whose label the admin gave: nothing to ask
    margin = engine.start(live.LiveConfig(strategy="margin", secured_size=50, initial_size=20, seed=3,
                                          gold_per_labeler=2), 500,
                          label_known=known, crowd=list(range(11)), buy_secured=False)
    assert margin.gold == []  # an undefended baseline buys no secured set and no gold


def test_wrong_gold_answers_flag_a_labeler_at_the_first_step():
    from learner.trust import TrustPolicy

    n = 10
    secured = np.r_[np.ones(4, bool), np.zeros(6, bool)]
    state = engine.EngineState(labels=np.full(n, -1), labeler_of=np.full(n, -1), discarded=np.zeros(n, bool),
                               secured=secured, secured_labels=np.r_[[0, 1, 0, 1], np.full(6, -1)],
                               trust={u: LabelerTrust() for u in range(3)}, crowd=list(range(3)), gold=secured.copy())
    state.answers = [(0, 0, 1), (1, 0, 0), (0, 1, 0), (1, 1, 1), (2, 2, 0), (3, 2, 1)]  # 0 misses both, 1 and 2 none
    assert state.gold_history() == {0: [(1, 0), (0, 1)], 1: [(0, 0), (1, 1)], 2: [(0, 0), (1, 1)]}
    assert state.secured_history() == {}  # gold items are judged by the truth, not by co-voters
    state.first_labels = {0: [(5, 1)]}
    state.verdicts = {(0, 5): 0}  # and one first label refuted
    cfg = live.LiveConfig(strategy="robust")
    flagged, _ = engine._assess_everyone(cfg, state, 2, set(), set(), engine.Plan(phase="closed"))
    assert flagged == [0]
    assert TrustPolicy().flag_alpha == cfg.flag_alpha


def test_the_simulator_and_a_second_run_agree_step_by_step(digits):
    x, y, xt, yt = digits
    data = LoopData(x[:400], y[:400], xt, yt, 10)
    labelers = LabelerPool.build(10, n_labelers=11, n_malicious=1, mapping={1: 7})
    a = run_loop(data, LoopConfig(strategy="robust", budget=250), labelers, seed=2)
    b = run_loop(data, LoopConfig(strategy="robust", budget=250), labelers, seed=2)
    assert [h.labels_bought for h in a.history] == [h.labels_bought for h in b.history]
    assert a.trust == b.trust


def test_a_round_whose_voters_all_reject_the_label_refutes_it_and_discards_the_item(setup):
    x, y, pool = setup
    cfg = live.LiveConfig(h=3, reannotation="adaptive", augment=(), secured_size=0)
    state, previous = _batch_with_wrong_labels(cfg, pool, y, wrong=1)
    plan = engine.step(cfg, pool, state, previous_model=previous)
    req = next(r for r in plan.requests if r.item == 300)
    req.votes += [int(y[300])]  # the first voter disagrees with the (wrong) label: ask the others
    for r in plan.requests:
        if r.item != 300:
            r.votes += [int(y[r.item])] * len(r.new_voters)
    plan = engine.step(cfg, pool, state, previous_model=previous)
    req = next(r for r in plan.requests if r.item == 300)
    wrong_too = (int(y[300]) + 2) % 10  # a second voter errs differently: the voters disagree
    req.votes += [wrong_too] + [int(y[300])] * (len(req.new_voters) - 1)
    plan = engine.step(cfg, pool, state, previous_model=previous)
    assert plan.closed
    rnd = next(r for r in plan.rounds if r["item_index"] == 300)
    assert rnd["outcome"] == "rejected" and rnd["consensus_label"] == int(y[300])
    assert state.discarded[300] and state.labels[300] == -1
    assert state.verdicts[(0, 300)] == int(y[300])  # the label counts as refuted for the tests
    assert state.trust[0].trust == 1.0  # but lowers no training weight


def test_a_single_confirming_vote_settles_a_round_only_from_a_voter_with_a_clean_record(setup):
    x, y, pool = setup
    cfg = live.LiveConfig(h=3, reannotation="adaptive", augment=(), secured_size=0)
    state, previous = _batch_with_wrong_labels(cfg, pool, y, wrong=2)
    plan = engine.step(cfg, pool, state, previous_model=previous)
    suspect = {r.item: r.asked[0] for r in plan.requests}
    voter = suspect[300]
    # the first voter's own record: 4 of its 5 first labels refuted by others
    state.first_labels[voter] = [(1000 + k, 0) for k in range(5)]
    state.verdicts.update({(voter, 1000 + k): 1 for k in range(4)})
    for r in plan.requests:  # everyone confirms the label under review (right or wrong)
        r.votes += [int(state.labels[r.item])] * len(r.new_voters)
    plan = engine.step(cfg, pool, state, previous_model=previous)
    # the round the discredited voter confirmed asks the other two; the others are settled
    assert [r.item for r in plan.requests if r.item == 300] == [300]
    assert 301 not in {r.item for r in plan.requests} or suspect[301] == voter


def test_votes_on_the_secured_set_count_against_their_voter():
    n = 12
    state = engine.EngineState(labels=np.full(n, -1), labeler_of=np.full(n, -1), discarded=np.zeros(n, bool),
                               secured=np.r_[np.ones(6, bool), np.zeros(6, bool)], secured_labels=np.full(n, -1),
                               trust={u: LabelerTrust() for u in range(4)}, crowd=list(range(4)))
    # S items 0-3: voters 0, 1 and 3, labeler 3 always differs from the two others, who agree
    state.answers = [(i, u, (1 if u == 3 else 0)) for i in range(4) for u in (0, 1, 3)]
    state.answers += [(i, u, 0) for i in (4, 5) for u in (0, 1, 2)]  # S items 4-5: all three agree
    state.answers += [(8, 3, 1), (8, 0, 0), (8, 1, 0)]  # a pool item: not S, not counted here
    gold = state.secured_history()
    assert gold[3] == [(1, 0)] * 4
    assert gold[0] == [(0, 0), (0, 0)]  # on items 0-3 its two co-voters disagree: no evidence either way
    assert gold[2] == [(0, 0), (0, 0)]
    from learner.trust import TrustPolicy, refutation_pvalue
    assert refutation_pvalue(gold[3], 2, TrustPolicy()) < TrustPolicy().flag_alpha
    assert refutation_pvalue(gold[0], 2, TrustPolicy()) == 1.0


def test_re_annotation_votes_are_judged_by_the_items_other_answers():
    """EngineState.vote_history: a vote against three agreeing other answers (the first label and
    two other votes) is refuted; one that agrees with them held; a round settled by one vote, or
    whose answers split, judges nobody. Each vote carries how many first labels its labeler gave before it."""
    n = 12
    state = engine.EngineState(labels=np.full(n, -1), labeler_of=np.full(n, -1), discarded=np.zeros(n, bool),
                               secured=np.r_[np.ones(2, bool), np.zeros(10, bool)], secured_labels=np.full(n, -1),
                               trust={u: LabelerTrust() for u in range(5)}, crowd=list(range(5)))
    state.first_labels = {0: [(4, 1), (5, 0)], 3: [(6, 0)], 1: [(7, 1)]}
    state.answers = [(4, 0, 1), (5, 0, 0), (6, 3, 0), (7, 1, 1),
                     (4, 3, 0), (4, 1, 1), (4, 2, 1),  # item 4: voter 3 against 0's label and two votes
                     (5, 1, 0),  # item 5: one confirming vote settles it
                     (6, 4, 1), (6, 1, 0), (6, 2, 1),  # item 6: the answers split
                     (7, 0, 1), (7, 2, 1), (7, 4, 1),  # item 7: everyone agrees
                     (0, 4, 1), (0, 1, 0), (0, 2, 0), (0, 3, 0)]  # S: not a re-annotation vote
    votes = state.vote_history()
    assert votes[3] == [(0, 1, 1)]  # refuted by 1; it had given one first label before (item 6 came later)
    assert votes[1] == [(1, None, 1), (0, None, 1), (0, None, 1)]  # voter 3 split item 4; 5: one vote; 6: split
    assert votes[0] == [(1, 1, 2)]
    assert votes[4] == [(1, None, 0), (1, 1, 0)]
    assert 2 in votes and all(c is None or c == g for g, c, _ in votes[2])


def test_refuted_votes_flag_a_spammer_before_its_first_labels_alone_would(setup):
    """Two refuted first labels of three are not enough at the first step; the same labeler's
    refuted votes are (learner.trust.assess with votes), and votes an audit cleared do not count."""
    from learner.trust import TrustPolicy, assess

    policy = TrustPolicy()
    history = [(2, 0), (1, None), (3, 1), (0, None), (1, None)]  # two of five first labels refuted
    votes = [(2, 0, 1), (1, 3, 2), (0, 0, 3), (3, None, 4)]  # two of four votes refuted
    alone = assess(LabelerTrust(), history, 4, systematic=False, unchecked=3, policy=policy)
    assert alone.status is Status.ACTIVE
    both = assess(LabelerTrust(), history, 4, systematic=False, unchecked=3, policy=policy, votes=votes)
    assert both.status is Status.FLAGGED
    cleared = LabelerTrust(cleared=5)  # an audit cleared everything up to the fifth first label
    later = assess(cleared, history, 4, systematic=False, unchecked=3, policy=policy, votes=votes)
    assert later.status is Status.ACTIVE
    honest = [(0, 1, k) for k in range(1)] + [(v, v, k) for k, v in enumerate([0, 1, 2, 3] * 3)]
    calm = assess(LabelerTrust(), [(a, a) for a in [0, 1, 2, 3] * 3] + [(1, 0)], 4, systematic=False,
                  unchecked=0, policy=policy, votes=honest)
    assert calm.status is Status.ACTIVE  # one refuted label and one refuted vote in 26 answers


def test_batch_per_annotator_sizes_the_next_batch_by_the_active_labelers(setup):
    """The step's next batch: max(batch_size, batch_per_annotator x active), budget permitting;
    ``active`` is the driver's input (EngineState.active_labelers), required when the setting is on."""
    x, y, pool = setup

    def next_batch(active, **cfg):
        cfg = live.LiveConfig(**{"strategy": "margin", "defenses": False, "secured_size": 0, "batch_size": 20,
                                 **cfg})
        state = _state(y)
        state.labels[:100], state.labeler_of[:100], state.batch = y[:100], 0, np.arange(80, 100)
        state.bought, state.active_labelers = 100, active
        plan = engine.step(cfg, pool, state, previous_model=None)
        assert plan.closed and not plan.stop
        assert not set(plan.next_items) & set(range(100))
        return len(plan.next_items)

    assert next_batch(None) == next_batch(50) == 20  # off: the batch size, whoever works
    assert next_batch(2, batch_per_annotator=6) == 20  # 12 < batch_size
    assert next_batch(7, batch_per_annotator=6) == 42
    assert next_batch(0, batch_per_annotator=6) == 20  # nobody counted: one person
    assert next_batch(50, batch_per_annotator=6, budget=130) == 30  # the budget caps it
    with pytest.raises(ValueError, match="active_labelers"):
        next_batch(None, batch_per_annotator=6)
    assert engine.batch_size_for(live.LiveConfig(batch_size=20, batch_per_annotator=6), 50) == 300
    for bad in (0, -1, True, 1.5, "6"):
        with pytest.raises(ValueError, match="batch_per_annotator"):
            live.LiveConfig.from_dict({"batch_per_annotator": bad})
    assert live.LiveConfig.from_dict({"batch_per_annotator": None}).batch_per_annotator is None


def test_the_simulator_sizes_batches_by_its_eligible_labelers(digits):
    """``learner.loop`` passes its eligible labelers (they answer everything): 11 x 5 = 55 per batch."""
    x, y, xt, yt = digits
    data = LoopData(x, y, xt, yt, 10)
    run = run_loop(data, LoopConfig(strategy="margin", budget=200, batch_per_annotator=5),
                   LabelerPool.build(10, n_labelers=11, error_rate=0.0), seed=0)
    assert [h.labels_bought for h in run.history] == [20, 75, 130, 185, 200]
    fixed = run_loop(data, LoopConfig(strategy="margin", budget=100), LabelerPool.build(10, error_rate=0.0), seed=0)
    assert [h.labels_bought for h in fixed.history] == [20, 40, 60, 80, 100]


def test_a_suspended_labelers_voice_no_longer_verifies_a_label():
    """A label verified by a round that a now suspended labeler's vote carried stands again on its
    first labeler's word; when the first labeler is the suspended one, it leaves D."""
    y = np.zeros(6, dtype=np.int64)
    state = _state(y, crowd=range(4))
    state.labels[:4] = [1, 1, 0, 0]
    # item 0: labeler 0's label 1 confirmed by labeler 3's vote; item 1: labeler 3's own label 1
    # confirmed by labeler 1; item 2: labeler 0's label 1 replaced by the votes 0, 0 of 1 and 2;
    # item 3: labeler 1's label 0 confirmed by labeler 2 (no suspended voice)
    state.support = {0: (0, 1, {0, 3}), 1: (3, 1, {3, 1}), 2: (0, 1, {1, 2}), 3: (1, 0, {1, 2})}
    state.trust[3].status = Status.SUSPENDED
    assert engine.withdraw_support(state) == [0, 1]
    assert (state.labels[:4].tolist(), state.labeler_of[:4].tolist()) == ([1, -1, 0, 0], [0, -1, -1, -1])
    assert set(state.support) == {2, 3}
    assert engine.withdraw_support(state) == []  # once


def test_rounds_record_who_carried_the_consensus(setup):
    x, y, pool = setup
    cfg = live.LiveConfig(batch_size=10, initial_size=10, secured_size=0, h=3, reannotation="parallel",
                          audit_confidence=0.5, recheck=False, probation_labels=0)
    state = _state(y)
    state.labels[:300] = y[:300]
    state.phase = engine.REANNOTATION
    item, wrong = 300, int((y[300] + 1) % 10)
    state.labels[item], state.labeler_of[item] = wrong, 0
    state.first_labels[0] = [(item, wrong)]
    state.requests[item] = engine.Request(item=item, original=0, label=wrong, votes=[int(y[item])] * 3,
                                          asked=[4, 5, 6])
    previous = live.train_model(pool.features, state.labels, state.weights(), 10, standardizer=pool.standardizer)
    engine._after_reannotation(cfg, pool, state, previous, engine.Plan(phase=engine.REANNOTATION))
    assert state.labels[item] == y[item] and state.labeler_of[item] == -1
    assert state.support[item] == (0, wrong, {4, 5, 6})  # the refuted original carried nothing


@pytest.mark.parametrize("escalate", [0, 2])
def test_a_split_round_in_a_small_crowd_is_decided_on_the_votes_it_has(setup, escalate):
    """Five labelers: a split round on labeler 0's wrong label can reach only 4 voters, not
    h + escalate_votes = 5. Escalation asks the fourth, and 3 of 4 against the label refute it
    (the item keeps the true class); the paper's rule discards the item at the split."""
    x, y, pool = setup
    cfg = live.LiveConfig(h=3, reannotation="parallel", augment=(), secured_size=0, escalate_votes=escalate)
    state, previous = _batch_with_wrong_labels(cfg, pool, y, wrong=1)
    state.crowd = list(range(5))
    state.trust = {u: LabelerTrust() for u in state.crowd}
    plan = engine.step(cfg, pool, state, previous_model=previous)
    given = int(state.labels[300])
    while not plan.closed:
        for r in plan.requests:  # others tell the truth, except the first voter on item 300
            r.votes += [given if r.item == 300 and not r.votes and k == 0 else int(y[r.item])
                        for k in range(len(r.new_voters))]
        plan = engine.step(cfg, pool, state, previous_model=previous)
    if escalate:
        assert state.labels[300] == y[300] and state.labeler_of[300] == -1 and not state.discarded[300]
        assert state.verdicts[(0, 300)] == y[300]
    else:
        assert state.discarded[300] and state.labels[300] == -1
