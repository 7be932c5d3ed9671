"""Thin views of the labeling app."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render

from learner import selectors as learner_selectors


@login_required
def home(request):
    """Landing page: annotators see their work, staff see projects and worker status."""
    return render(
        request,
        "home.html",
        {"last_ping": learner_selectors.last_worker_ping() if request.user.is_staff else None},
    )


def health(request):
    """Liveness/readiness for load balancers: 200 when the database answers, else 503."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any database failure means "not ready"
        return JsonResponse({"status": "unavailable", "database": "down"}, status=503)
    return JsonResponse({"status": "ok", "database": "up"})
