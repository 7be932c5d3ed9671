"""Admin of the labeling app. State, batches and answers are read-only here: services write them."""
from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from .models import Annotation, Assignment, Item, IterationMetric, LabelerProfile, Project, QueryBatch


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "state", "iteration", "created_at", "staff_page")
    list_filter = ("state",)
    search_fields = ("name",)
    readonly_fields = ("state", "iteration", "stop_reason", "loop_error", "storage_key", "created_by", "created_at",
                       "updated_at")

    @admin.display(description="staff page")
    def staff_page(self, obj):
        return format_html('<a href="{}">open</a>', reverse("labeling:staff-project", args=[obj.pk]))

    def get_readonly_fields(self, request, obj=None):
        ro = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.state != Project.State.DRAFT:
            ro += ["classes", "config"]  # the running loop depends on them
        return ro

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "index", "source", "ground_truth", "is_secured")
    list_filter = ("project", "is_secured")
    search_fields = ("source",)
    readonly_fields = [f.name for f in Item._meta.fields]


@admin.register(QueryBatch)
class QueryBatchAdmin(admin.ModelAdmin):
    list_display = ("project", "iteration", "strategy", "phase", "opened_at", "frozen_at", "closed_at")
    list_filter = ("project", "phase")
    readonly_fields = [f.name for f in QueryBatch._meta.fields]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "batch", "item", "labeler", "kind", "status", "completed_at")
    list_filter = ("kind", "status", "batch__project")
    readonly_fields = [f.name for f in Assignment._meta.fields]


@admin.register(Annotation)
class AnnotationAdmin(admin.ModelAdmin):
    list_display = ("id", "assignment", "label", "seconds", "created_at")
    readonly_fields = [f.name for f in Annotation._meta.fields]


@admin.register(IterationMetric)
class IterationMetricAdmin(admin.ModelAdmin):
    list_display = ("project", "iteration", "labels_bought", "n_labeled", "secured_accuracy",
                    "ground_truth_accuracy", "check_triggered", "reannotated", "discarded")
    list_filter = ("project",)
    readonly_fields = [f.name for f in IterationMetric._meta.fields]


@admin.register(LabelerProfile)
class LabelerProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "trust", "is_flagged", "is_suspended", "labels_given", "checked", "disagreements", "alerts")
    list_filter = ("is_flagged", "is_suspended")
    readonly_fields = ("user", "trust", "labels_given", "checked", "disagreements", "alerts", "updated_at",
                       "is_flagged", "is_suspended")
    actions = ["suspend", "reinstate"]

    # Both go through trust.services so each is recorded in the trust history (TrustEvent).
    @admin.action(description="Suspend (their open work goes to others)")
    def suspend(self, request, queryset):
        from trust import services as trust_services

        done = 0
        for profile in queryset:
            try:
                trust_services.suspend(labeler=profile.user, actor=request.user, note="Django admin action")
                done += 1
            except trust_services.ReviewError:
                pass  # already suspended
        messages.success(request, f"{done} labeler(s) suspended.")

    @admin.action(description="Reinstate (clear flagged and suspended)")
    def reinstate(self, request, queryset):
        from trust import services as trust_services

        done = 0
        for profile in queryset:
            try:
                trust_services.reinstate(labeler=profile.user, actor=request.user, note="Django admin action")
                done += 1
            except trust_services.ReviewError:
                pass  # neither flagged nor suspended
        messages.success(request, f"{done} labeler(s) reinstated.")
