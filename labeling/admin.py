"""Admin of the labeling app. State, batches and answers are read-only here: services write them.
Labeler profiles (with the suspend / reinstate actions) are in the trust app's admin."""
from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from .models import Annotation, Assignment, Item, IterationMetric, Project, QueryBatch


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
