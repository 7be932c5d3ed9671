"""JSON API of the labeling app (mounted at /api/labeling/)."""
from django.urls import path

from . import api, api_members, staff_api

app_name = "labeling-api"

urlpatterns = [
    path("next/", api.NextAssignmentView.as_view(), name="next"),
    path("assignments/<int:assignment_id>/annotation/", api.AnswerView.as_view(), name="answer"),
    path("assignments/<int:assignment_id>/skip/", api.SkipView.as_view(), name="skip"),
    path("undo/", api.UndoView.as_view(), name="undo"),
    path("projects/<int:project_id>/status/", api.ProjectStatusView.as_view(), name="status"),
    path("projects/<int:project_id>/metrics/", api.ProjectMetricsView.as_view(), name="metrics"),
    path("projects/<int:project_id>/export/<str:kind>.<str:fmt>", api.ExportView.as_view(), name="export"),
    path("projects/<int:project_id>/members/", api_members.ProjectMembersView.as_view(), name="project-members"),
    # staff: script a project (labeling/staff_api.py)
    path("projects/", staff_api.ProjectsView.as_view(), name="projects"),
    path("projects/<int:project_id>/", staff_api.ProjectDetailView.as_view(), name="project"),
    path("projects/<int:project_id>/images/", staff_api.ProjectUploadView.as_view(), name="project-images"),
    path("projects/<int:project_id>/import/", staff_api.ProjectImportView.as_view(), name="project-import"),
    path("projects/<int:project_id>/start/", staff_api.ProjectStartView.as_view(), name="project-start"),
    path("projects/<int:project_id>/pause/", staff_api.ProjectPauseView.as_view(), name="project-pause"),
    path("projects/<int:project_id>/resume/", staff_api.ProjectResumeView.as_view(), name="project-resume"),
    path("projects/<int:project_id>/batches/", staff_api.ProjectBatchesView.as_view(), name="project-batches"),
    path("projects/<int:project_id>/annotators/", staff_api.ProjectAnnotatorsView.as_view(),
         name="project-annotators"),
]
