"""Fixtures and helpers shared by the ``test_labeling_*`` files (import the fixtures you use)."""
from __future__ import annotations

import numpy as np
import pytest

from labeling import answering, importers, services
from labeling.models import Assignment, Project
from tests.web.factories import AnnotatorFactory, StaffFactory


@pytest.fixture
def labeling_dirs(settings, tmp_path, monkeypatch):
    """Media and cache folders of this test, also exported for worker subprocesses."""
    media, cache = tmp_path / "media", tmp_path / "cache"
    media.mkdir()
    cache.mkdir()
    settings.MEDIA_ROOT = media
    settings.LABELING_LOOP_DELAY_SECONDS = 0
    monkeypatch.setenv("MEDIA_ROOT", str(media))
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(cache))
    return media, cache


@pytest.fixture
def annotators(db):
    return [AnnotatorFactory(username=n) for n in ("ann_a", "ann_b", "ann_c")]


@pytest.fixture
def staff(db):
    return StaffFactory(username="boss")


DEFAULT_CONFIG = {"strategy": "robust", "batch_size": 6, "initial_size": 6, "secured_size": 6, "h": 2, "gold_per_labeler": 0,
                  "probation_labels": 0,
                  "backbone": "flatten", "feature_size": 8, "channels": 1, "budget": 60, "n_clusters": 3}


def digits_project(*, name="digits", n=48, classes=("0", "1", "2"), config=None, start=True,
                   members=None) -> Project:
    """A small project of real 8x8 digits (upscaled 4x), ground truth hidden, optionally started.

    ``members``: its annotators (default: every active annotator that exists now)."""
    from labeling import membership, selectors
    from learner.data import load_digits

    data = load_digits(classes=list(classes), pool_size=n, test_size=0, seed=0)
    project = services.create_project(name=name, classes=list(classes), config={**DEFAULT_CONFIG, **(config or {})})
    membership.set_members(project=project, users=list(selectors.annotators()) if members is None else members)
    report = importers.import_arrays(project=project, images=data.x_pool, labels=data.y_pool, upscale=4)
    assert report.ok, report.errors
    if start:
        services.start_project(project=project)
        project.refresh_from_db()
    return project


def take_turns(project: Project):
    """Yield ``(user, assignment)`` as the project's members take turns asking for work, until
    nobody gets any. Answer (or skip) each before taking the next: a member who still holds an
    item is handed the same one again."""
    from django.contrib.auth import get_user_model

    from labeling import selectors

    users = list(get_user_model().objects.filter(pk__in=selectors.member_ids(project)).order_by("id"))
    misses, k = 0, 0
    while users and misses < len(users):
        user = users[k % len(users)]
        k += 1
        asg = answering.next_assignment(user=user, project=project)
        if asg is None:
            misses += 1
            continue
        misses = 0
        yield user, asg


def answer_open(project: Project, *, truthful=True, wrong_for=()) -> int:
    """The project's members take turns taking work from the queue and answering it until nobody
    gets any (ground truth, or wrong for ``wrong_for`` usernames); returns the answers given."""
    n = 0
    for user, asg in take_turns(project):
        label = asg.item.ground_truth
        if not truthful or user.username in wrong_for:
            label = (label + 1) % project.n_classes
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=label, seconds=0.5)
        n += 1
    return n


def claim(user, project: Project) -> Assignment:
    """``user`` asks for work in ``project`` and gets an item (fails the test otherwise)."""
    asg = answering.next_assignment(user=user, project=project)
    assert asg is not None and asg.labeler_id == user.pk and asg.status == Assignment.Status.OPEN, asg
    return asg


def finish_batch(project: Project, batch, *, wrong_for=()) -> str:
    """Run the loop step on a complete ``batch`` and answer its re-annotation rounds (truthfully,
    or wrongly for ``wrong_for``) until the batch closes; returns the last outcome."""
    from labeling import loop_step

    outcome = loop_step.advance_loop(batch_id=batch.pk)
    for _ in range(10):
        if not outcome.startswith("reannotation"):
            break
        answer_open(project, wrong_for=wrong_for)
        outcome = loop_step.advance_loop(batch_id=batch.pk)
    return outcome


def random_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)


def poll_js(page, expression: str, timeout: float = 20.0) -> None:
    """Wait until a JS expression is truthy in a Playwright page.

    ``page.wait_for_function`` evaluates strings with ``eval`` once it has to poll, which the
    site's CSP forbids (an intermittent failure); ``page.evaluate`` goes through the debugger
    protocol, which CSP does not govern.
    """
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)
