"""The staff REST API (mounted under /api/labeling/): script a project from creation to labeling.

``POST projects/`` creates a project with its settings, ``POST projects/<id>/images/`` uploads
images (files or a zip), ``POST projects/<id>/import/`` imports a server folder or a data set,
``POST projects/<id>/start/``, ``pause/`` and ``resume/`` drive it, and ``GET`` on the project,
``batches/`` and ``annotators/`` reads it (the accuracy history is ``metrics/``, exports
``export/<kind>.<fmt>``). Staff only, by token or session, as the rest of the API. Views stay
thin: the services write (``services``, ``importers``), ``staff_selectors`` reads.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from . import importers, selectors, services, staff_selectors, workflow
from .api import _error, _invalid
from .models import Project
from .permissions import IsStaff
from .staff_serializers import (AnnotatorProgressSerializer, BatchSerializer, ErrorSerializer,
                                ImportRefusedSerializer, ImportReportSerializer, ImportSourceSerializer,
                                ProjectCreateSerializer, ProjectListItemSerializer, ProjectSerializer,
                                StartedSerializer, UploadSerializer)

TAG = ["staff"]
_ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer}
_CONFLICT = {**_ERRORS, 409: ErrorSerializer}


def _project(project_id: int) -> Project:
    return get_object_or_404(Project, pk=project_id)


def _summary(project: Project) -> dict:
    return ProjectSerializer(staff_selectors.project_summary(project)).data


def _report_payload(project: Project, report: importers.ImportReport) -> dict:
    return {"ok": report.ok, "imported": report.imported, "strict": report.strict, "summary": report.summary(),
            "errors": [{"file": f, "reason": r} for f, r in report.errors],
            "skipped": [{"file": f, "reason": r} for f, r in report.skipped],
            "n_items": selectors.item_count(project)}


def _import_response(project: Project, run) -> Response:
    """Run an import service: 201 with the report, 400 with it (and a ``detail``) when refused."""
    if project.state != Project.State.DRAFT:
        return Response({"detail": f"images can only be added to a draft project (this one is {project.state})"},
                        status=status.HTTP_409_CONFLICT)
    try:
        report = run()
    except importers.ImportFailed as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    payload = _report_payload(project, report)
    if not report.ok:
        payload["detail"] = f"nothing imported: {report.summary()}" + (
            "; send skip_invalid=true to import the valid files" if report.strict and report.errors else "")
        return Response(payload, status=status.HTTP_400_BAD_REQUEST)
    return Response(payload, status=status.HTTP_201_CREATED)


class ProjectsView(APIView):
    permission_classes = [IsStaff]
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    @extend_schema(tags=TAG, summary="List projects (staff)", responses={200: ProjectListItemSerializer(many=True),
                                                                         403: ErrorSerializer})
    def get(self, request):
        return Response(ProjectListItemSerializer(staff_selectors.project_list(), many=True).data)

    @extend_schema(
        tags=TAG, summary="Create a project with its settings (staff)", request=ProjectCreateSerializer,
        responses={201: ProjectSerializer, **_ERRORS},
        examples=[OpenApiExample("digits", request_only=True, value={
            "name": "digits 0-2", "classes": ["0", "1", "2"], "description": "Which digit is it?",
            "config": {"batch_size": 10, "initial_size": 10, "secured_size": 20, "h": 2}})],
    )
    def post(self, request):
        ser = ProjectCreateSerializer(data=request.data)
        if not ser.is_valid():
            return _invalid(ser)
        d = ser.validated_data
        try:
            with transaction.atomic():
                project = services.create_project(name=d["name"], classes=[c.strip() for c in d["classes"]],
                                                  description=d["description"], config=d["config"],
                                                  created_by=request.user)
        except ValueError as exc:  # LiveConfig.from_dict: unknown key, value out of range
            return Response({"detail": f"config: {exc}", "errors": {"config": [str(exc)]}}, status=400)
        except ValidationError as exc:  # full_clean: duplicate name, invalid class names
            errors = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
            parts = [f"{k}: {' '.join(v)}" if k != "__all__" else " ".join(v) for k, v in errors.items()]
            return Response({"detail": "; ".join(parts), "errors": errors}, status=400)
        except IntegrityError:  # the same name created concurrently
            return Response({"detail": "name: Project with this Name already exists."}, status=400)
        return Response(_summary(project), status=status.HTTP_201_CREATED)


class ProjectDetailView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(tags=TAG, summary="A project: settings, state, counts and the open batch (staff)",
                   responses={200: ProjectSerializer, 403: ErrorSerializer, 404: ErrorSerializer})
    def get(self, request, project_id: int):
        return Response(_summary(_project(project_id)))


class ProjectUploadView(APIView):
    permission_classes = [IsStaff]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        tags=TAG, summary="Upload images: files or a zip (staff, draft projects)",
        description="Every file is checked as on the import page (decodes as an image, size and pixel limits, "
                    "safe paths, known class folders); the report lists each refused or ignored file and why. "
                    "Strict by default: any refused file and nothing is imported.",
        request={"multipart/form-data": UploadSerializer},
        responses={201: ImportReportSerializer, 400: ImportRefusedSerializer, 403: ErrorSerializer,
                   404: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request, project_id: int):
        project = _project(project_id)
        ser = UploadSerializer(data=request.data)
        if not ser.is_valid():
            return _invalid(ser)
        d = ser.validated_data
        strict = not d["skip_invalid"]
        uploads = d.get("files") or [d["archive"]]
        total = sum(f.size or 0 for f in uploads)
        if total > settings.ROBUSTAL_MAX_UPLOAD_BYTES:
            return Response({"detail": f"the upload is larger than {settings.ROBUSTAL_MAX_UPLOAD_BYTES} bytes"},
                            status=400)
        if d.get("archive") is not None:
            return _import_response(project, lambda: importers.import_zip(project=project, file=d["archive"],
                                                                          strict=strict))
        return _import_response(project, lambda: importers.import_files(project=project, files=d["files"],
                                                                        strict=strict))


class ProjectImportView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(
        tags=TAG, summary="Import images from a server folder or a data set (staff, draft projects)",
        description="As the import page: a folder inside the allowed import roots (images at the top level or "
                    "one folder per class), or a data set (digits, cifar2, cifar10, .npz, CIFAR-10 archive) "
                    "whose labels become the hidden ground truth.",
        request=ImportSourceSerializer,
        responses={201: ImportReportSerializer, 400: ImportRefusedSerializer, 403: ErrorSerializer,
                   404: ErrorSerializer, 409: ErrorSerializer},
        examples=[OpenApiExample("digits", request_only=True, value={"dataset": "digits", "pool_size": 300,
                                                                     "upscale": 4})],
    )
    def post(self, request, project_id: int):
        project = _project(project_id)
        ser = ImportSourceSerializer(data=request.data)
        if not ser.is_valid():
            return _invalid(ser)
        d = ser.validated_data
        strict = not d["skip_invalid"]
        if d.get("folder"):
            return _import_response(project, lambda: importers.import_folder(project=project, path=d["folder"],
                                                                             strict=strict))
        return _import_response(project, lambda: importers.import_dataset(
            project=project, spec=d["dataset"], pool_size=d.get("pool_size"), upscale=d["upscale"], strict=strict))


class ProjectStartView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(tags=TAG, summary="Start labeling: secured set and first batch (staff, draft projects)",
                   description="Refused (409) when the project has no images, is not a draft, or when the secured "
                               "set and the first batch would use up the pool.",
                   request=None, responses={200: StartedSerializer, **_CONFLICT})
    def post(self, request, project_id: int):
        project = _project(project_id)
        try:
            services.start_project(project=project)
        except workflow.LabelingError as exc:
            return _error(exc)
        project.refresh_from_db()
        summary = staff_selectors.project_summary(project)
        return Response(StartedSerializer({"project": summary, "batch": summary["open_batch"]}).data)


class ProjectPauseView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(tags=TAG, summary="Pause: hand out no more work (staff)",
                   description="Annotators get no new assignment from the project until it is resumed; answers to "
                               "work already on their screen are kept. Idempotent.",
                   request=None, responses={200: ProjectSerializer, **_CONFLICT})
    def post(self, request, project_id: int):
        try:
            project = services.pause_project(project=_project(project_id))
        except workflow.LabelingError as exc:
            return _error(exc)
        return Response(_summary(project))


class ProjectResumeView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(tags=TAG, summary="Resume a paused project: hand out work again (staff)",
                   description="Idempotent: resuming a project that is not paused changes nothing.",
                   request=None, responses={200: ProjectSerializer, **_ERRORS})
    def post(self, request, project_id: int):
        return Response(_summary(services.unpause_project(project=_project(project_id))))


class ProjectBatchesView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(tags=TAG, summary="Batches of a project with their assignments counted (staff)",
                   responses={200: BatchSerializer(many=True), 403: ErrorSerializer, 404: ErrorSerializer})
    def get(self, request, project_id: int):
        return Response(BatchSerializer(staff_selectors.batch_rows(_project(project_id)), many=True).data)


class ProjectAnnotatorsView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(tags=TAG, summary="Per-annotator progress, speed, agreement and standing (staff)",
                   responses={200: AnnotatorProgressSerializer(many=True), 403: ErrorSerializer,
                              404: ErrorSerializer})
    def get(self, request, project_id: int):
        rows = staff_selectors.annotator_progress(_project(project_id))
        return Response(AnnotatorProgressSerializer(rows, many=True).data)
