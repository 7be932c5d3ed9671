"""HTML pages of the labeling app (mounted at /labeling/)."""
from django.urls import path

from . import views

app_name = "labeling"

urlpatterns = [
    path("projects/<int:project_id>/annotate/", views.annotate, name="annotate"),
    path("assignments/<int:assignment_id>/image", views.assignment_image, name="assignment-image"),
    path("staff/notices/seen/", views.staff_notices_seen, name="staff-notices-seen"),
    path("staff/projects/new/", views.staff_project_new, name="staff-project-new"),
    path("staff/projects/<int:project_id>/", views.staff_project, name="staff-project"),
    path("staff/projects/<int:project_id>/settings/", views.staff_project_settings, name="staff-project-settings"),
    path("staff/projects/<int:project_id>/import/", views.staff_project_import, name="staff-project-import"),
    path("staff/projects/<int:project_id>/members/", views.staff_project_members, name="staff-project-members"),
    path("staff/projects/<int:project_id>/start/", views.staff_project_start, name="staff-project-start"),
    path("staff/projects/<int:project_id>/resume/", views.staff_project_resume, name="staff-project-resume"),
    path("staff/projects/<int:project_id>/pause/", views.staff_project_pause, name="staff-project-pause"),
]
