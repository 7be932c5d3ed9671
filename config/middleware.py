"""Project-wide middleware."""
from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

log = logging.getLogger(__name__)

DB_UNAVAILABLE_MESSAGE = "The database is unavailable right now; nothing was changed. Please try again in a minute."
DB_RETRY_AFTER_SECONDS = 30


class DatabaseUnavailableMiddleware:
    """Turn a lost database connection into a 503 with a clear message instead of a 500 traceback.

    ``OperationalError``/``InterfaceError`` from a view mean the server could not reach (or lost)
    the database: the request's transaction did not commit, so telling the client to retry is
    honest. API paths get JSON (``{"detail": ..., "code": "database_unavailable"}``), pages get a
    short HTML page; both carry ``Retry-After``. Other database errors (integrity, data) are bugs
    or bad input and keep their normal handling.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        log.error("database unavailable during %s %s: %s", request.method, request.path,
                  str(exception).strip().splitlines()[0] if str(exception).strip() else exception.__class__.__name__)
        if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
            response = JsonResponse({"detail": DB_UNAVAILABLE_MESSAGE, "code": "database_unavailable"}, status=503)
        else:
            response = HttpResponse(
                "<!doctype html><html><head><title>Temporarily unavailable</title></head><body>"
                f"<h1>Temporarily unavailable</h1><p>{DB_UNAVAILABLE_MESSAGE}</p></body></html>",
                status=503, content_type="text/html; charset=utf-8")
        response["Retry-After"] = str(DB_RETRY_AFTER_SECONDS)
        return response


# ---- login lockout (django-axes) ------------------------------------------------------------

LOGIN_LOCKED_MESSAGE = ("Too many failed logins for this account from your address. Try again in {minutes} "
                        "minutes, or ask a staff member to unlock it.")


def login_locked_out(request, original_response=None, credentials=None):
    """Response to a login refused by django-axes (``AXES_LOCKOUT_CALLABLE``): 429 with a clear message.

    JSON for the API (``/api/token/``), a short HTML page for the login forms; ``Retry-After``
    says when the lock lifts on its own.
    """
    from django.conf import settings

    seconds = int(float(getattr(settings, "AXES_COOLOFF_TIME", 0) or 0) * 3600)
    message = LOGIN_LOCKED_MESSAGE.format(minutes=max(1, round(seconds / 60)))
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        response = JsonResponse({"detail": message, "code": "login_locked"}, status=429)
    else:
        from django.utils.html import escape

        response = HttpResponse(
            "<!doctype html><html><head><title>Login locked</title></head><body>"
            f"<h1>Login locked</h1><p>{escape(message)}</p></body></html>",
            status=429, content_type="text/html; charset=utf-8")
    if seconds:
        response["Retry-After"] = str(seconds)
    return response


# ---- request size (before anything reads the body) -------------------------------------------


class RequestSizeLimitMiddleware:
    """Refuse an oversized request body from its ``Content-Length``, before anything reads it: 413.

    Multipart uploads (the staff import page) may reach ``ROBUSTAL_MAX_UPLOAD_BYTES`` plus 1 MiB
    of form overhead; every other body (JSON API, forms) ``DATA_UPLOAD_MAX_MEMORY_SIZE``. Django
    alone streams an upload of any size to disk before the form can refuse it, and DRF reads a
    JSON body of any size into memory.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from django.conf import settings

        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        multipart = request.META.get("CONTENT_TYPE", "").startswith("multipart/form-data")
        limit = (settings.ROBUSTAL_MAX_UPLOAD_BYTES + 1024 * 1024 if multipart
                 else settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        if limit is not None and length > limit:
            message = f"The request is larger than {limit} bytes ({length} bytes); nothing was changed."
            if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
                return JsonResponse({"detail": message, "code": "request_too_large"}, status=413)
            return HttpResponse(
                "<!doctype html><html><head><title>Request too large</title></head><body>"
                f"<h1>Request too large</h1><p>{message}</p></body></html>",
                status=413, content_type="text/html; charset=utf-8")
        return self.get_response(request)
