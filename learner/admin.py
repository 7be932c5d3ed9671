from django.contrib import admin

from .models import Experiment, WorkerPing


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("name", "scenario", "dataset", "runs", "seed", "status", "created_at")
    list_filter = ("scenario", "status")
    search_fields = ("name", "dataset")
    readonly_fields = ("created_at", "finished_at")


@admin.register(WorkerPing)
class WorkerPingAdmin(admin.ModelAdmin):
    list_display = ("hostname", "queue", "answered_at", "token")
    readonly_fields = ("token", "hostname", "queue", "answered_at")
