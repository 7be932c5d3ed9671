"""Changing a project's settings and instructions (staff), before or during labeling.

Before start every setting may change. Once labeling has started only
:data:`labeling.config_fields.LIVE_EDITABLE` may (each loop step reads the project's config
afresh, and these only bound or size what comes next); a finished project keeps its settings.
The instructions (``description``) may change at any time.
"""
from __future__ import annotations

from django.db import transaction

from learner.live import LiveConfig

from .config_fields import FIELDS, LIVE_EDITABLE
from .models import Project
from .workflow import Conflict


def locked_changes(project: Project, new_config: dict) -> list[str]:
    """Settings in ``new_config`` that differ from the project's and may not change in its state."""
    if project.state == Project.State.DRAFT:
        return []
    current = project.live_config.to_dict()
    changed = [k for k, v in new_config.items() if current.get(k) != v]
    if project.state == Project.State.FINISHED:
        return changed
    return [k for k in changed if k not in LIVE_EDITABLE]


def update_project(*, project: Project, description: str | None = None, config: dict | None = None) -> Project:
    """Set the instructions and/or the settings (validated; refused with a reason when locked)."""
    with transaction.atomic():
        p = Project.objects.select_for_update().get(pk=project.pk)
        fields = ["updated_at"]
        if config is not None:
            new = LiveConfig.from_dict(config).to_dict()  # ValueError on a bad value
            locked = locked_changes(p, new)
            if locked:
                why = "the project is finished" if p.state == Project.State.FINISHED else None
                raise Conflict("; ".join(f"{k} cannot change now: {why or FIELDS[k].locked_reason}" for k in locked))
            p.config = new
            fields.append("config")
        if description is not None:
            p.description = description
            fields.append("description")
        p.full_clean()
        p.save(update_fields=fields)
    return p
