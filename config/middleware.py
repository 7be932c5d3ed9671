"""Project-wide middleware."""
from __future__ import annotations

import logging

from csp import middleware as _csp_middleware
from django.conf import settings
from django.core.signals import setting_changed
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

    JSON for the API (``/api/token/``), the styled page ``registration/locked_out.html`` for the
    login forms (this callable replaces django-axes' ``AXES_LOCKOUT_TEMPLATE``); ``Retry-After``
    says when the lock lifts on its own.
    """
    seconds = int(float(getattr(settings, "AXES_COOLOFF_TIME", 0) or 0) * 3600)
    message = LOGIN_LOCKED_MESSAGE.format(minutes=max(1, round(seconds / 60)))
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        response = JsonResponse({"detail": message, "code": "login_locked"}, status=429)
    else:
        from django.shortcuts import render

        response = render(request, "registration/locked_out.html", {"message": message}, status=429)
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


class CSPMiddleware(_csp_middleware.CSPMiddleware):
    """django-csp's middleware, with the settings' policy built once instead of per response.

    django-csp rebuilds the header from settings on every response (dataclasses turned into
    dicts into a string), a tenth of an annotator's answer request outside the database. The
    headers only vary when a view overrides the policy (``csp_update`` and friends), a template
    used a nonce, or paths are excluded: those responses, and DEBUG, take django-csp's own path.
    The cache is dropped when a test changes the CSP settings.
    """

    _OVERRIDES = ("_csp_config", "_csp_update", "_csp_replace", "_csp_exempt",
                  "_csp_config_ro", "_csp_update_ro", "_csp_replace_ro", "_csp_exempt_ro")
    _static: list[tuple[str, str]] | None = None

    def process_response(self, request, response):
        if (settings.DEBUG or getattr(request, "_csp_nonce", None) is not None
                or any(hasattr(response, name) for name in self._OVERRIDES)
                or any((getattr(settings, s, None) or {}).get("EXCLUDE_URL_PREFIXES")
                       for s in ("CONTENT_SECURITY_POLICY", "CONTENT_SECURITY_POLICY_REPORT_ONLY"))):
            return super().process_response(request, response)
        static = CSPMiddleware._static
        if static is None:
            probe = HttpResponse()
            super().process_response(request, probe)
            static = CSPMiddleware._static = [(h, probe[h]) for h in (_csp_middleware.HEADER,
                                                                        _csp_middleware.HEADER_REPORT_ONLY) if h in probe]
        for header, value in static:
            if header not in response:
                response[header] = value
        # as django-csp does: a nonce asked for after the header went out is an error, not a silent gap
        request.csp_nonce = _csp_middleware.CheckableLazyObject(self._csp_nonce_post_response)
        return response


def _forget_csp(setting, **kwargs):
    if setting.startswith("CONTENT_SECURITY_POLICY") or setting == "DEBUG":
        CSPMiddleware._static = None


setting_changed.connect(_forget_csp)
