"""Thin views of the labeling app (HTML pages; the JSON API is in ``api.py``)."""
from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from learner import selectors as learner_selectors
from learner.live import LiveConfig

from . import (config_fields, importers, membership, notice_selectors, notifications, project_settings, queue,
               selectors, services, staff_selectors, workflow)
from .access import staff_only
from .charts import accuracy_svg
from .forms import ImportForm, InstructionsForm, MembersForm, ProjectForm, SettingsForm
from .models import Assignment, Project


@login_required
def home(request):
    """Landing page: annotators see their projects, staff see every project and worker status."""
    user = request.user
    projects = list(selectors.project_list_for(user)) if (user.is_staff or selectors.is_annotator(user)) else []
    rows = [{"project": p, "progress": selectors.progress_for(user, p)} for p in projects]
    return render(request, "home.html", {
        "worker_status": learner_selectors.worker_status() if user.is_staff else None,
        "notices": notice_selectors.trust_notices(user) if user.is_staff else None,
        "rows": rows, "is_annotator": selectors.is_annotator(user),
        "standing": selectors.labeler_standing(user) if selectors.is_annotator(user) else None,
    })


def health(request):
    """Liveness/readiness for load balancers: 200 when the database answers, else 503."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any database failure means "not ready"
        return JsonResponse({"status": "unavailable", "database": "down"}, status=503)
    return JsonResponse({"status": "ok", "database": "up"})


# ---- annotators ------------------------------------------------------------------------


@login_required
def annotate(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    if not (request.user.is_staff or selectors.is_annotator(request.user)):
        raise PermissionDenied("only annotators label")
    if not selectors.project_visible_to(request.user, project):
        raise Http404("no such project")
    return render(request, "labeling/annotate.html", {"project": project, "undo_seconds": workflow.undo_seconds()})


@login_required
@require_GET
@never_cache
def assignment_image(request, assignment_id: int):
    """The image of one of *your* assignments, under an opaque URL (no file name, no item id)."""
    asg = Assignment.objects.select_related("item").filter(pk=assignment_id).first()
    if asg is None or not (asg.labeler_id == request.user.pk or request.user.is_staff):
        raise Http404("no such image")
    try:
        fh = asg.item.image.open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404("image file missing") from None
    response = FileResponse(fh, content_type="image/png", filename="image.png")
    response["Cache-Control"] = "private, no-store"
    return response


# ---- staff -----------------------------------------------------------------------------


@staff_only
def staff_project_new(request):
    form = ProjectForm(request.POST or None)
    settings_form = SettingsForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and settings_form.is_valid():
        try:
            project = services.create_project(created_by=request.user, **form.cleaned_data,
                                              config=settings_form.cleaned_config)
        except Exception as exc:  # ValidationError from full_clean, e.g. a duplicate name
            form.add_error(None, str(getattr(exc, "messages", [exc])[0]))
        else:
            messages.success(request, f"Project {project.name} created. Import images next (below).")
            return redirect(reverse("labeling:staff-project", args=[project.pk]) + "#import")
    return render(request, "labeling/staff_project_new.html", {
        "form": form, "settings_form": settings_form,
        "pool_fit": config_fields.pool_fit(LiveConfig.from_dict({}), 0)})


def _settings_form(project: Project, data=None) -> SettingsForm:
    return SettingsForm(data, current=project.config, started=project.state != Project.State.DRAFT,
                        finished=project.state == Project.State.FINISHED)


def _staff_context(project: Project, *, user=None, import_form=None, report=None, settings_form=None,
                   instructions_form=None) -> dict:
    metrics = selectors.metric_history(project)
    n_items = selectors.item_count(project)
    return {
        "project": project, "metrics": metrics, "chart": mark_safe(accuracy_svg(metrics)),  # built from numbers only
        "config_json": json.dumps(project.config, sort_keys=True, indent=1),
        "batches": project.batches.order_by("-iteration")[:20], "n_items": n_items,
        "labels_bought": selectors.labels_bought(project), "import_form": import_form or ImportForm(),
        "report": report, "open_batch": selectors.open_batch(project),
        "settings_form": settings_form or _settings_form(project),
        "instructions_form": instructions_form or InstructionsForm(initial={"description": project.description}),
        "pool_fit": config_fields.pool_fit(project.live_config, n_items),
        "members_form": MembersForm(project=project), "lease_minutes": queue.lease_seconds() / 60,
        "live_editable": [config_fields.FIELDS[k].label for k in config_fields.LIVE_EDITABLE],
        "notices": notice_selectors.trust_notices(user, project=project) if user is not None else None,
        "annotator_rows": staff_selectors.annotator_progress(project),
    }


@staff_only
def staff_project(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    return render(request, "labeling/staff_project.html", _staff_context(project, user=request.user))


@staff_only
@require_POST
def staff_notices_seen(request):
    """The staff member has seen the flag and suspension notices up to the time the page showed."""
    until = parse_datetime(request.POST.get("until") or "")
    notifications.mark_seen(user=request.user, until=until if until and until.tzinfo else None)
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        target = reverse("home")
    return redirect(target)


@staff_only
@require_POST
def staff_project_settings(request, project_id: int):
    """Instructions and settings; after start only the settings that may still change."""
    project = get_object_or_404(Project, pk=project_id)
    settings_form = _settings_form(project, request.POST)
    instructions_form = InstructionsForm(request.POST)
    if settings_form.is_valid() and instructions_form.is_valid():
        try:
            project_settings.update_project(project=project, config=settings_form.cleaned_config,
                                            description=instructions_form.cleaned_data["description"])
        except (workflow.LabelingError, ValueError) as exc:
            settings_form.add_error(None, getattr(exc, "message", str(exc)))
        else:
            messages.success(request, "Settings saved.")
            return redirect(reverse("labeling:staff-project", args=[project.pk]) + "#settings")
    return render(request, "labeling/staff_project.html",
                  _staff_context(project, user=request.user, settings_form=settings_form,
                                 instructions_form=instructions_form),
                  status=400)


@staff_only
@require_POST
def staff_project_import(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    form = ImportForm(request.POST, request.FILES)
    report = None
    if form.is_valid():
        d = form.cleaned_data
        strict = not d.get("skip_invalid")
        try:
            if d.get("archive"):
                report = importers.import_zip(project=project, file=d["archive"], strict=strict)
            elif d.get("folder"):
                report = importers.import_folder(project=project, path=d["folder"], strict=strict)
            else:
                report = importers.import_dataset(project=project, spec=d["dataset"], pool_size=d.get("pool_size"),
                                                  upscale=d.get("upscale") or 1, strict=strict)
        except importers.ImportFailed as exc:
            form.add_error(None, str(exc))
        else:
            if report.ok and not report.errors and not report.skipped:
                messages.success(request, report.summary())
                return redirect("labeling:staff-project", project_id=project.pk)
            # otherwise the import section shows the summary and every refused file, once
    return render(request, "labeling/staff_project.html",
                  _staff_context(project, user=request.user, import_form=form, report=report),
                  status=200 if report is not None and report.ok else 400)


@staff_only
@require_POST
def staff_project_members(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    form = MembersForm(request.POST, project=project)
    if form.is_valid():
        try:
            chosen = membership.set_members(project=project, users=list(form.cleaned_data["members"]),
                                            actor=request.user)
        except workflow.LabelingError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Annotators: {', '.join(u.get_username() for u in chosen) or 'none'}.")
    else:
        messages.error(request, " ".join(str(e) for errors in form.errors.values() for e in errors))
    return redirect("labeling:staff-project", project_id=project.pk)


@staff_only
@require_POST
def staff_project_start(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    try:
        batch = services.start_project(project=project)
    except workflow.LabelingError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Labeling started: batch 0 with {batch.assignments.count()} assignments.")
    return redirect("labeling:staff-project", project_id=project.pk)


@staff_only
@require_POST
def staff_project_pause(request, project_id: int):
    """Pause (``action=pause``) or hand out work again (``action=unpause``); the staff API's pause/resume."""
    project = get_object_or_404(Project, pk=project_id)
    try:
        if request.POST.get("action") == "unpause":
            services.unpause_project(project=project)
            messages.success(request, "Work is handed out again.")
        else:
            services.pause_project(project=project)
            messages.success(request, "Paused: annotators get no new images from this project; answers to images "
                                      "already on their screens are kept.")
    except workflow.LabelingError as exc:
        messages.error(request, exc.message)
    return redirect("labeling:staff-project", project_id=project.pk)


@staff_only
@require_POST
def staff_project_resume(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    if services.resume_loop(project=project):
        messages.success(request, "The loop task was sent again.")
    else:
        messages.info(request, "Nothing to resume: the open batch is not complete.")
    return redirect("labeling:staff-project", project_id=project.pk)
