"""Error pages people can read, whatever DEBUG says.

With ``DEBUG=1`` (``DEBUG=1 bash scripts/run.sh`` for development) Django answers an unknown address
with its technical 404 page, which lists every URL pattern of the site. This middleware gives
every 404 of an HTML page the styled ``404.html`` instead (the API keeps its JSON 404), in DEBUG
as without it; tracebacks of a 500 in DEBUG stay (they are for the developer running it).

It also answers a signed-in non-staff user who opens the Django admin with the styled 403 page:
the admin would show its own login form, which reads as if the password were wrong.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404

from config import views


class FriendlyErrorPagesMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (request.path.startswith("/admin/") and user is not None and user.is_authenticated
                and not (user.is_active and user.is_staff)):
            return views.permission_denied(request, PermissionDenied("The admin is for staff."))
        response = self.get_response(request)
        # No URL pattern matched (``resolver_match`` is set only when one did): under DEBUG the
        # response is Django's technical page with the URL list; without DEBUG it already is ours.
        if settings.DEBUG and response.status_code == 404 and getattr(request, "resolver_match", None) is None:
            return views.not_found(request, Http404())
        return response

    def process_exception(self, request, exception):
        if settings.DEBUG and isinstance(exception, Http404):
            return views.not_found(request, exception)  # not the technical page
        return None
