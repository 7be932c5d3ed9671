"""JSON API of the labeling app (mounted at /api/labeling/)."""
from django.urls import path

from . import api

app_name = "labeling-api"

urlpatterns = [
    path("next/", api.NextAssignmentView.as_view(), name="next"),
    path("assignments/<int:assignment_id>/annotation/", api.AnswerView.as_view(), name="answer"),
    path("assignments/<int:assignment_id>/skip/", api.SkipView.as_view(), name="skip"),
    path("undo/", api.UndoView.as_view(), name="undo"),
    path("projects/<int:project_id>/status/", api.ProjectStatusView.as_view(), name="status"),
    path("projects/<int:project_id>/metrics/", api.ProjectMetricsView.as_view(), name="metrics"),
    path("projects/<int:project_id>/export/<str:kind>.<str:fmt>", api.ExportView.as_view(), name="export"),
]
