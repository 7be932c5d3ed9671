"""Project-wide views: error handlers (the API answers in JSON with a ``detail`` message) and the token view."""
from __future__ import annotations

from django.http import JsonResponse
from django.views import defaults
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.response import Response

from config.middleware import login_locked_out


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def not_found(request, exception=None):
    """404: ``{"detail": ...}`` under /api/ (e.g. a malformed id that matches no route), else Django's page."""
    if _is_api(request):
        return JsonResponse({"detail": "Not found: no such API endpoint or object.", "code": "not_found"}, status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request, exception=None):
    if _is_api(request):
        return JsonResponse({"detail": "Bad request.", "code": "bad_request"}, status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request, exception=None):
    if _is_api(request):
        return JsonResponse({"detail": "You do not have permission to do this.", "code": "permission_denied"},
                            status=403)
    return defaults.permission_denied(request, exception)


def server_error(request):
    if _is_api(request):
        return JsonResponse({"detail": "Internal server error; the request was not completed. Please try again.",
                             "code": "server_error"}, status=500)
    return defaults.server_error(request)


# ---- API token ------------------------------------------------------------------------------


class ObtainTokenView(ObtainAuthToken):
    """``POST /api/token/`` ``{username, password}`` -> ``{"token": ...}``; errors carry a ``detail`` sentence.

    DRF's view answers bad credentials with ``non_field_errors`` only; clients (and our promise that
    every 4xx says why in ``detail``) get one readable sentence plus the per-field errors. Repeated
    failures lock the user name for this address (django-axes: 429 with a message).
    """

    @extend_schema(summary="Get your API token", request=AuthTokenSerializer,
                   responses={200: inline_serializer("TokenOut", {"token": serializers.CharField()})})
    def post(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        valid = serializer.is_valid()
        # django-axes flags the request it was given (DRF's wrapper), which its middleware never sees.
        if getattr(request, "axes_locked_out", False) or getattr(request._request, "axes_locked_out", False):
            return login_locked_out(request)
        if not valid:
            errors = serializer.errors
            parts = [" ".join(str(m) for m in msgs) if field == "non_field_errors" else
                     f"{field}: {' '.join(str(m) for m in msgs)}" for field, msgs in errors.items()]
            return Response({"detail": "; ".join(parts), "errors": errors}, status=400)
        return super().post(request, *args, **kwargs)