"""Django admin of the trust app: read-only history (services write it), and the labelers'
profiles with the suspend / reinstate actions."""
from __future__ import annotations

from django.contrib import admin, messages

from labeling.models import ConfusionEstimate, DiscardedAnnotation, LabelerProfile, ReannotationRound, TrustEvent

from . import services


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


@admin.register(LabelerProfile)
class LabelerProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "trust", "is_flagged", "is_suspended", "labels_given", "checked", "disagreements", "alerts")
    list_filter = ("is_flagged", "is_suspended")
    readonly_fields = ("user", "trust", "labels_given", "checked", "disagreements", "alerts", "updated_at",
                       "is_flagged", "is_suspended")
    actions = ["suspend", "reinstate"]

    # Registered here, not in labeling/admin.py: both actions go through trust.services so each is
    # recorded in the trust history (TrustEvent), and labeling never imports the trust app.
    @admin.action(description="Suspend (their open work goes to others)")
    def suspend(self, request, queryset):
        self._review(request, queryset, services.suspend, "suspended")  # skips those already suspended

    @admin.action(description="Reinstate (clear flagged and suspended)")
    def reinstate(self, request, queryset):
        self._review(request, queryset, services.reinstate, "reinstated")  # skips those neither flagged nor suspended

    @staticmethod
    def _review(request, queryset, action, done_word: str) -> None:
        done = 0
        for profile in queryset:
            try:
                action(labeler=profile.user, actor=request.user, note="Django admin action")
                done += 1
            except services.ReviewError:
                pass
        messages.success(request, f"{done} labeler(s) {done_word}.")
