"""Who may open the staff pages (HTML). The JSON API has its DRF permissions in ``permissions.py``."""
from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied


def staff_only(view):
    """Anonymous: to the login page; signed in but not staff: the styled 403 page.

    (Django's ``staff_member_required`` sends a signed-in annotator to the admin's login form,
    which reads as if their password were wrong.)
    """
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (request.user.is_active and request.user.is_staff):
            raise PermissionDenied("This page is for staff.")
        return view(request, *args, **kwargs)
    return wrapped
