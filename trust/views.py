"""Staff-only review of labelers (mounted at /trust/). Annotators get 403 on every page."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from labeling.access import staff_only
from labeling.models import Item, TrustEvent

from . import selectors, services
from .charts import trust_svg
from .forms import DiscardForm, NoteForm

User = get_user_model()


@staff_only
@require_GET
def labeler_list(request):
    rows = selectors.labeler_rows()
    for r in rows:
        r["chart"] = mark_safe(trust_svg(r["series"], width=160, height=36, compact=True,  # numbers only
                                         label=f"trust of {r['user'].get_username()}"))
    return render(request, "trust/labeler_list.html", {"rows": rows,
                                                       "pending_rounds": selectors.pending_round_count()})


@staff_only
@require_GET
def labeler_detail(request, user_id: int):
    labeler = get_object_or_404(User, pk=user_id)
    series = selectors.trust_series_many([labeler.pk]).get(labeler.pk, [])
    confusions = []
    for est in selectors.confusion_for(labeler):
        classes = est.project.classes
        suspicious = {tuple(p) for p in est.suspicious_pairs}
        rows = [{"name": classes[a] if a < len(classes) else a,
                 "cells": [{"rate": v, "count": est.counts[a][b], "off": a != b, "suspicious": (a, b) in suspicious}
                           for b, v in enumerate(row)]} for a, row in enumerate(est.matrix)]
        confusions.append({"estimate": est, "classes": classes, "rows": rows,
                           "pairs": [f"{classes[a]} → {classes[b]}" for a, b in est.suspicious_pairs]})
    return render(request, "trust/labeler_detail.html", {
        "labeler": labeler, **selectors.labeler_state(labeler), "suggestion": selectors.review_suggestion(labeler),
        "chart": mark_safe(trust_svg(series, label=f"trust of {labeler.get_username()}")),  # numbers only
        "confusions": confusions, "disputed": selectors.disputed_rounds(labeler),
        "events": selectors.events_for(labeler), "note_form": NoteForm(), "discard_form": DiscardForm(),
    })


def _act(request, user_id: int, action):
    labeler = get_object_or_404(User, pk=user_id)
    try:
        event = action(labeler)
    except services.ReviewError as exc:
        messages.error(request, str(exc))
    else:
        if event is not None:
            what = event.get_reason_display()
            if event.reason == TrustEvent.Reason.REINSTATED:  # the rules reinstate too; this one was yours
                what = f"reinstated by {request.user.get_username()}"
            messages.success(request, f"{labeler.get_username()}: {what}. {event.note}".strip())
    return redirect("trust:labeler", user_id=labeler.pk)


@staff_only
@require_POST
def reinstate(request, user_id: int):
    form = NoteForm(request.POST)
    note = form.cleaned_data["note"] if form.is_valid() else ""
    return _act(request, user_id, lambda u: services.reinstate(labeler=u, actor=request.user, note=note))


@staff_only
@require_POST
def suspend(request, user_id: int):
    form = NoteForm(request.POST)
    note = form.cleaned_data["note"] if form.is_valid() else ""
    return _act(request, user_id, lambda u: services.suspend(labeler=u, actor=request.user, note=note))


@staff_only
@require_POST
def discard(request, user_id: int):
    form = DiscardForm(request.POST)
    if not form.is_valid():
        get_object_or_404(User, pk=user_id)
        messages.error(request, "Give a valid date and time: " + "; ".join(
            f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
        return redirect("trust:labeler", user_id=user_id)
    d = form.cleaned_data
    return _act(request, user_id, lambda u: services.discard_labels_since(labeler=u, since=d["since"],
                                                                          actor=request.user, note=d["note"]))


@staff_only
@require_GET
@never_cache
def item_image(request, item_id: int):
    """An item's image for the review page (staff only; annotators see images only through their
    own assignments)."""
    item = get_object_or_404(Item, pk=item_id)
    try:
        fh = item.image.open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404("image file missing") from None
    response = FileResponse(fh, content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response
