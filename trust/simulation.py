"""Simulated labelers driving the *web* loop: real services, real models, no HTTP, no Celery.

Used by ``tests/web/test_trust_simulation.py`` (short runs with assertions, and the parity test
against ``learner.loop``) and ``bench/bench_trust_simulation.py`` (the threat suite over many
seeds). Eleven annotator accounts answer their assignments with :mod:`learner.oracles` labelers
(honest with error rate ``pr``; the last ``n_malicious`` are adversaries of one kind); after each
complete batch the loop service runs synchronously. Answers come from
:meth:`learner.oracles.LabelerPool.answer`, the same function the simulator asks.

The labelers are the project's members and take their work from the shared queue
(:func:`labeling.answering.next_assignment`) as people do. To answer the same items as the
simulator (whose labelers answer what the engine planned for them), the engine's plan is
recorded (:func:`_recording_plans`: ``assignees`` of a new batch, ``new_voters`` of
re-annotation rounds) and the planned labeler of each queued slot asks for work when that slot
is the first one waiting: the queue hands out slots in the batch's order, so they get exactly
it. ``SimulationResult.off_plan`` counts answers given by someone other than the planned labeler
(0 when the queue follows the plan; the parity test checks it).

With ``pipeline`` the loop closes the oldest open batch while people label the younger one: the
labelers answer the younger batch before each loop step on the older one (as people do while
the model trains), so the step's state must leave those answers out to plan what the simulator
plans (it labels the pending batch after the step).

Two things production does after a commit are done here directly, because the harness runs
inside one test transaction where ``on_commit`` hooks never fire: the loop task is *not* sent
(we call :func:`labeling.loop_step.advance_loop` ourselves) and a labeler who was just flagged or
suspended gives back the items they hold (:func:`labeling.services.release_open_work`, what
``_release_after_commit`` does). Flagged labelers stay flagged (no simulated admin review):
the run measures what the rules flag by themselves.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field



@dataclass
class SimulationResult:
    """What one simulated run measured."""

    seed: int
    batches: int  # first-label batches processed (iteration 0 is the random initial batch)
    malicious_ids: list[int]
    honest_ids: list[int]
    flagged_at: dict[int, int] = field(default_factory=dict)  # labeler -> iteration after which it was blocked
    reasons: dict[int, list[str]] = field(default_factory=dict)  # labeler -> trust event reasons that blocked it
    labels_bought: int = 0
    seconds: float = 0.0
    stop: str = ""
    bought_per_iteration: list[int] = field(default_factory=list)  # IterationMetric.labels_bought, in order
    suspended_at: dict[int, int] = field(default_factory=dict)  # labeler -> iteration after which it was suspended
    wrong_before_flag: dict[int, int] = field(default_factory=dict)  # adversary -> wrong first labels given until flagged
    # of them, given in attack (a mapping applied, a spammer's wrong answer); the rest are honest slips
    attacks_before_flag: dict[int, int] = field(default_factory=dict)
    project_id: int | None = None
    suggestions: dict[int, str] = field(default_factory=dict)  # blocked labeler -> suggested review at the end
    answers: int = 0  # answers given through the queue
    off_plan: int = 0  # of them, answered by someone other than the labeler the engine planned

    @property
    def malicious_flagged_after(self) -> int | None:
        """Batches (0-based iteration + 1) until every malicious labeler was flagged; None if not."""
        hits = [self.flagged_at.get(u) for u in self.malicious_ids]
        return None if any(h is None for h in hits) else max(hits) + 1

    @property
    def honest_flagged(self) -> int:
        return sum(1 for u in self.honest_ids if u in self.flagged_at)

    @property
    def honest_false_flag_rate(self) -> float:
        return self.honest_flagged / max(len(self.honest_ids), 1)


@dataclass
class _Planned:
    """Who the loop engine planned for each slot, in the order the slots are created."""

    batches: list[list[int | None]] = field(default_factory=list)  # per batch iteration: its first slots
    rounds: list[int | None] = field(default_factory=list)  # the latest re-annotation slots

    def of(self, batch) -> list[int | None]:
        if batch.phase == "reannotation":
            return self.rounds
        return self.batches[batch.iteration] if batch.iteration < len(self.batches) else []


@contextmanager
def _recording_plans():
    """Record who the loop engine planned for each slot it makes: a new batch's first labels (at
    the start the secured set's voters follow them; with pipeline the second random batch is
    batch 1), or the new voters of each re-annotation round."""
    from learner import engine

    planned = _Planned()
    start, step = engine.start, engine.step

    def recording_start(*args, **kwargs):
        plan = start(*args, **kwargs)
        queued = [who for _, _, who in engine.start_queue(plan)]  # first labels and gold questions, in queue order
        planned.batches[:] = [queued + [v for voters in plan.secured_voters.values() for v in voters]]
        if len(plan.following):
            planned.batches.append(list(plan.following_assignees))
        return plan

    def recording_step(*args, **kwargs):
        plan = step(*args, **kwargs)
        if plan.requests:
            planned.rounds = [v for req in plan.requests for v in req.new_voters]
        elif plan.next_items:
            planned.batches.append(list(plan.assignees))
        return plan

    engine.start, engine.step = recording_start, recording_step
    try:
        yield planned
    finally:
        engine.start, engine.step = start, step


@contextmanager
def _no_task_sending():
    from labeling import workflow

    original = workflow.enqueue
    workflow.enqueue = lambda *args, **kwargs: None  # the harness runs the loop itself
    try:
        yield
    finally:
        workflow.enqueue = original


def run(*, seed: int = 0, n_labelers: int = 11, n_malicious: int = 1, mapping: dict[str, str] | None = None,
        classes: tuple[str, ...] = ("1", "4", "7"), pool_size: int = 360, max_batches: int = 6,
        error_rate: float = 0.05, config: dict | None = None, prefix: str = "sim",
        stop_when_flagged: bool = False, kind: str = "malicious", retire: bool = True) -> SimulationResult:
    """One simulated project; returns what it measured (see :class:`SimulationResult`).

    Parameters
    ----------
    seed : seeds the data split, the project (LiveConfig.seed) and the labelers' errors
    mapping : malicious mapping by class name (default ``{"1": "7"}``)
    max_batches : first-label batches to process at most (iteration 0 included)
    stop_when_flagged : stop as soon as every malicious labeler is flagged
    kind : the adversaries' kind (:meth:`learner.oracles.LabelerPool.build`: malicious, sleeper, spammer)
    retire : deactivate the run's accounts at the end (a next run in the same database gets its own crowd)
    """
    from django.contrib.auth import get_user_model

    from labeling import importers, loop_step, membership, selectors, services
    from labeling.models import LabelerProfile, Project
    from learner.data import load_digits
    from learner.oracles import LabelerPool

    from labeling.models import TrustEvent

    mapping = mapping or {"1": "7"}
    idx = {c: k for k, c in enumerate(classes)}
    oracle = LabelerPool.build(len(classes), n_labelers=n_labelers, error_rate=error_rate, n_malicious=n_malicious,
                               mapping={idx[a]: idx[b] for a, b in mapping.items()}, kind=kind)
    User = get_user_model()
    users = []
    for j in range(n_labelers):
        u = User.objects.create_user(username=f"{prefix}{seed}_{j:02d}", password=None)
        services.add_annotator(u)
        users.append(u)
    data = load_digits(classes=list(classes), pool_size=pool_size, test_size=0, seed=seed)
    cfg = {"strategy": "robust", "batch_size": 30, "initial_size": 30, "secured_size": 30, "h": 3,
           "backbone": "flatten", "feature_size": 8, "channels": 1, "n_clusters": 5, "seed": seed,
           **(config or {})}
    project = services.create_project(name=f"{prefix} digits {seed}", classes=list(classes), config=cfg)
    membership.set_members(project=project, users=users)
    report = importers.import_arrays(project=project, images=data.x_pool, labels=data.y_pool, upscale=2)
    if not report.ok:
        raise RuntimeError(report.summary())
    asker = _Asker(oracle, seed)
    result = SimulationResult(seed=seed, batches=0, malicious_ids=[u.pk for u in users[n_labelers - n_malicious:]],
                              honest_ids=[u.pk for u in users[:n_labelers - n_malicious]])
    oracle_of = {u.pk: j for j, u in enumerate(users)}
    t0 = time.perf_counter()
    with _no_task_sending(), _recording_plans() as planned:
        services.start_project(project=project)
        while True:
            project.refresh_from_db()
            if project.state == Project.State.FINISHED:
                result.stop = project.stop_reason
                break
            batch = selectors.open_batch(project)  # the oldest open one: the loop closes it next
            for labeled in selectors.open_batches(project):  # pipeline: the younger one is labeled meanwhile
                answered, off_plan = _answer_everything(project, labeled, users, asker, oracle_of, planned)
                result.answers += answered
                result.off_plan += off_plan
            if not selectors.batch_is_complete(batch):
                result.stop = "stuck: nobody eligible for the remaining work"
                break
            iteration = batch.iteration
            outcome = loop_step.advance_loop(batch_id=batch.pk)
            blocked = set(LabelerProfile.objects.filter(user__in=users)
                          .exclude(is_flagged=False, is_suspended=False).values_list("user_id", flat=True))
            for uid in sorted(blocked - set(result.flagged_at)):
                result.flagged_at[uid] = iteration
                result.wrong_before_flag[uid] = asker.wrong_first[oracle_of[uid]]
                result.attacks_before_flag[uid] = asker.wrong_attacks[oracle_of[uid]]
                result.reasons[uid] = sorted(set(TrustEvent.objects.filter(labeler_id=uid, project=project)
                                                 .exclude(reason__in=["confirmed", "agreed", "disagreement"])
                                                 .values_list("reason", flat=True)))
                services.release_open_work(user=User.objects.get(pk=uid))  # what the on_commit hook does
            for uid in LabelerProfile.objects.filter(user__in=users, is_suspended=True).values_list("user_id", flat=True):
                result.suspended_at.setdefault(uid, iteration)
            batch.refresh_from_db()
            if batch.closed_at is not None:
                result.batches = iteration + 1
                if result.batches >= max_batches:
                    result.stop = f"{max_batches} batches"
                    break
                if stop_when_flagged and result.malicious_flagged_after is not None:
                    result.stop = "malicious flagged"
                    break
            elif not outcome.startswith("reannotation"):  # neither closed nor new rounds: stuck
                result.stop = "loop made no progress"
                break
    result.labels_bought = selectors.labels_bought(project)
    result.bought_per_iteration = list(project.metrics.order_by("iteration").values_list("labels_bought", flat=True))
    result.project_id = project.pk
    result.seconds = time.perf_counter() - t0
    from .selectors import review_suggestion

    for uid in result.flagged_at:
        suggestion = review_suggestion(User.objects.get(pk=uid))
        if suggestion is not None:
            result.suggestions[uid] = suggestion[0]
    if retire:  # a next run in the same database gets its own crowd only
        User.objects.filter(pk__in=[u.pk for u in users]).update(is_active=False)
    return result


class _Asker:
    """The simulated labelers' answers, counted as the simulator counts them (same answers)."""

    def __init__(self, oracle, seed: int):
        self.oracle, self.seed = oracle, seed
        self.times: dict[tuple[int, int], int] = {}
        self.first: dict[int, int] = {}
        self.wrong_first: dict[int, int] = {j: 0 for j in oracle.ids}
        self.wrong_attacks: dict[int, int] = {j: 0 for j in oracle.ids}  # wrong first labels given in attack

    def __call__(self, j: int, item: int, truth: int, first_label: bool) -> int:
        nth = self.times.get((j, item), 0)
        self.times[(j, item)] = nth + 1
        given_before = self.first.get(j, 0)
        label = self.oracle.answer(j, item, truth, seed=self.seed, nth=nth, first_label=first_label,
                                   given_before=given_before)
        if first_label:
            self.first[j] = given_before + 1
            self.wrong_first[j] += int(label != truth)
            attack = self.oracle.labelers[j].attacks(truth, first_label=True, given_before=given_before)
            self.wrong_attacks[j] += int(label != truth and attack)
        return label


def _answer_everything(project, batch, users, asker, oracle_of, planned: _Planned) -> tuple[int, int]:
    """The simulated labelers empty ``batch``'s queue; returns (answers, answers off plan).

    The slot waiting first is asked for by the labeler the engine planned for it (then, if they
    get nothing, by the others in order): the queue hands out its first slot they may take.
    """
    from labeling import answering
    from labeling.models import Assignment

    waiting = Assignment.objects.filter(batch=batch, status=Assignment.Status.QUEUED).order_by("id")
    slots = list(waiting.values_list("id", flat=True))
    plan = planned.of(batch)
    plan_of = dict(zip(slots, plan)) if len(slots) == len(plan) else {}
    by_id = {u.pk: u for u in users}
    n = off_plan = 0
    while (first := waiting.first()) is not None:
        who = by_id.get(plan_of.get(first.pk))
        for u in ([who] if who is not None else []) + [u for u in users if u is not who]:
            asg = answering.next_assignment(user=u, project=project)
            if asg is not None:
                break
        else:
            break  # nobody may take what is left
        label = asker(oracle_of[u.pk], int(asg.item.index), int(asg.item.ground_truth), asg.kind == "first_label")
        answering.submit_annotation(user=u, assignment_id=asg.pk, label=label, seconds=1.0)
        n += 1
        off_plan += int(plan_of.get(asg.pk, -1) not in (None, u.pk))  # no plan for the slot: off plan
    return n, off_plan
