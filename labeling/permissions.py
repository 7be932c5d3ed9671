"""DRF permissions of the labeling API."""
from __future__ import annotations

from rest_framework.permissions import BasePermission

from . import selectors
from .authentication import IS_ANNOTATOR_ATTR


class IsAnnotator(BasePermission):
    """Members of the ``annotators`` group (staff may use the annotator endpoints too)."""

    message = "Only annotators may do this."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if user.is_staff:
            return True
        known = getattr(user, IS_ANNOTATOR_ATTR, None)  # answered by the token lookup (same request)
        if known is not None:
            return bool(known and user.is_active)
        return selectors.is_annotator(user)


class IsStaff(BasePermission):
    message = "Staff only."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)
