"""Project members: the annotators staff chose for a project (only they are handed its work).

Writes only; the reads are :func:`labeling.selectors.member_ids` and
:func:`labeling.selectors.eligible_labelers`. Someone removed from a project gives back at once
the items they held in it (:func:`labeling.queue.release_claims`).
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from . import queue
from .models import ANNOTATORS_GROUP, Project, ProjectMember
from .workflow import InvalidInput

User = get_user_model()


def resolve_annotators(names_or_users) -> list:
    """Users from usernames (or users): every one must exist, be active and be an annotator.

    Raises InvalidInput naming every problem at once (nothing is changed then).
    """
    if isinstance(names_or_users, (str, bytes)) or not hasattr(names_or_users, "__iter__"):
        raise InvalidInput("members must be a list of usernames")
    wanted, users = [], []
    for entry in names_or_users:
        if isinstance(entry, User):
            users.append(entry)
        elif isinstance(entry, str) and entry.strip():
            wanted.append(entry.strip())
        else:
            raise InvalidInput(f"members must be a list of usernames; got {entry!r}")
    if len(wanted) > 10000:
        raise InvalidInput("at most 10000 members")
    found = {u.get_username(): u for u in User.objects.filter(**{f"{User.USERNAME_FIELD}__in": wanted})}
    unknown = sorted(set(wanted) - set(found))
    users += [found[n] for n in wanted if n in found]
    annotators = set(User.objects.filter(pk__in=[u.pk for u in users], is_active=True,
                                         groups__name=ANNOTATORS_GROUP).values_list("pk", flat=True))
    refused = sorted({u.get_username() for u in users if u.pk not in annotators})
    problems = []
    if unknown:
        problems.append(f"no such user: {', '.join(unknown)}")
    if refused:
        problems.append(f"not an active annotator (add them to the annotators group first): {', '.join(refused)}")
    if problems:
        raise InvalidInput("; ".join(problems))
    return list({u.pk: u for u in users}.values())


def set_members(*, project: Project, users, actor=None) -> list:
    """Make ``users`` (users or usernames) exactly the project's members; returns them by username.

    Members who are removed give back the items they hold in the project's open batch (those
    return to the queue for the others). Adding or removing does not touch anyone's answers.
    """
    chosen = resolve_annotators(users)
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)
        current = set(ProjectMember.objects.filter(project=project).values_list("user_id", flat=True))
        keep = {u.pk for u in chosen}
        removed = current - keep
        ProjectMember.objects.filter(project=project, user_id__in=removed).delete()
        ProjectMember.objects.bulk_create([ProjectMember(project=project, user=u, added_by=actor)
                                           for u in chosen if u.pk not in current])
        for uid in sorted(removed):
            queue.release_claims(user=User(pk=uid), project=project)
    return sorted(chosen, key=lambda u: u.get_username())


def add_members(*, project: Project, users, actor=None) -> list:
    """Add ``users`` to the project's members (the others stay); returns every member."""
    chosen = resolve_annotators(users)
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)
        current = set(ProjectMember.objects.filter(project=project).values_list("user_id", flat=True))
        ProjectMember.objects.bulk_create([ProjectMember(project=project, user=u, added_by=actor)
                                           for u in chosen if u.pk not in current])
    return list(User.objects.filter(project_memberships__project=project).order_by(User.USERNAME_FIELD))
