"""Django admin of the trust app: read-only history (services write it)."""
from __future__ import annotations

from django.contrib import admin

from .models import ConfusionEstimate, DiscardedAnnotation, ReannotationRound, TrustEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    """Every staff member may read the trust history (they review labelers); nobody edits it here."""

    def has_view_permission(self, request, obj=None):
        return bool(request.user.is_active and request.user.is_staff)

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(TrustEvent)
class TrustEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "labeler", "reason", "delta", "trust_after", "project", "item", "model_confidence",
                    "actor")
    list_filter = ("reason", "project")
    search_fields = ("labeler__username", "note")


@admin.register(ReannotationRound)
class ReannotationRoundAdmin(ReadOnlyAdmin):
    list_display = ("opened_at", "project", "item", "original_labeler", "original_label", "outcome",
                    "consensus_label", "prob_consensus", "resolved_at")
    list_filter = ("outcome", "project")


@admin.register(ConfusionEstimate)
class ConfusionEstimateAdmin(ReadOnlyAdmin):
    list_display = ("project", "labeler", "n_labels", "suspicious_pairs", "updated_at")
    list_filter = ("project",)


@admin.register(DiscardedAnnotation)
class DiscardedAnnotationAdmin(ReadOnlyAdmin):
    list_display = ("annotation", "event", "created_at")
