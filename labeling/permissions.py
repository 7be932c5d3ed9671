"""DRF permissions of the labeling API."""
from __future__ import annotations

from rest_framework.permissions import BasePermission

from . import selectors


class IsAnnotator(BasePermission):
    """Members of the ``annotators`` group (staff may use the annotator endpoints too)."""

    message = "Only annotators may do this."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and (user.is_staff or selectors.is_annotator(user)))


class IsStaff(BasePermission):
    message = "Staff only."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)
