"""REST API of the labeling app (DRF). Views are thin: parse, call a service/selector, serialize.

Annotators: ``GET next/``, ``POST assignments/<id>/annotation/``, ``POST assignments/<id>/skip/``,
``POST undo/``, ``GET projects/<id>/status/``. Staff: the same status with details, metrics,
exports. An assignment that is not yours answers 404 (its existence is not revealed).
"""
from __future__ import annotations

import csv
import functools
import json
import math

from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.fields import DateTimeField
from rest_framework.response import Response
from rest_framework.views import APIView

from . import answering, queue, selectors, workflow
from .models import Project
from .permissions import IsAnnotator, IsStaff
from .serializers import (AnnotationOutSerializer, AnswerInSerializer, AssignmentOutSerializer, MetricSerializer,
                          NextOutSerializer, StatusOutSerializer, UndoInSerializer)


def _error(exc: workflow.LabelingError) -> Response:
    return Response({"detail": exc.message}, status=exc.status_code)


def _invalid(ser) -> Response:
    """400 with one readable sentence in ``detail`` plus DRF's per-field errors."""
    parts = [f"{field}: {' '.join(str(m) for m in msgs)}" for field, msgs in ser.errors.items()]
    return Response({"detail": "; ".join(parts), "errors": ser.errors}, status=400)


def _project_or_404(request, project_id) -> Project:
    project = get_object_or_404(Project, pk=project_id)
    if not selectors.project_visible_to(request.user, project):
        from django.http import Http404

        raise Http404("no such project")
    return project


def status_payload(user, project: Project) -> dict:
    data = {"id": project.pk, "name": project.name, "state": project.state, "paused": project.is_paused,
            "iteration": project.iteration, "classes": project.classes,
            "progress": selectors.progress_for(user, project)}
    if user.is_staff:
        data.update({
            "stop_reason": project.stop_reason, "labels_bought": selectors.labels_bought(project),
            "n_items": selectors.item_count(project), "config": project.config,
            "history": MetricSerializer(selectors.metric_history(project), many=True).data,
        })
    return data


class NextAssignmentView(APIView):
    permission_classes = [IsAnnotator]

    @extend_schema(
        summary="Your next assignment (claimed from the project's shared queue)",
        parameters=[OpenApiParameter("project", int, required=False, description="Only this project."),
                    OpenApiParameter("prefetch", bool, required=False,
                                     description="Also hold the next item (``upcoming``) so its image can be loaded "
                                                 "ahead; anyone who runs out of work may take it over.")],
        responses=NextOutSerializer,
    )
    def get(self, request):
        project = None
        if request.query_params.get("project"):
            try:
                project = _project_or_404(request, int(request.query_params["project"]))
            except ValueError:
                return Response({"detail": "project must be an integer id"}, status=400)
        prefetch = request.query_params.get("prefetch", "").lower() in ("1", "true", "yes")
        work = queue.next_work(user=request.user, project=project, prefetch=prefetch)
        if work.current is None and project is not None and answering.retire_stale_skips(project=project):
            project.refresh_from_db()  # a batch that only waited for skipped items may be complete now
        if work.current is not None:
            project = work.project
        progress = (selectors.progress_for(request.user, project, batch_id=work.batch_id,
                                           bought_before=work.bought_before) if project else None)
        message = "" if work.current is not None else _no_work_message(request.user, project)
        return Response(next_payload(work.current, work.upcoming, project, progress, message))


@functools.cache
def _image_url_template() -> str:
    return reverse("labeling:assignment-image", args=[0]).replace("/0/", "/{}/")


def next_payload(asg, upcoming, project: Project | None, progress: dict | None, message: str) -> dict:
    """``NextOutSerializer(...).data`` without building serializers on every ``next`` (the
    annotators' hot path; a test checks both give the same)."""
    def image_url(a) -> str:
        return _image_url_template().format(a.pk)

    return {
        "assignment": None if asg is None else {
            "id": asg.pk, "project": project.pk, "project_name": project.name, "image_url": image_url(asg),
            "classes": [str(c) for c in project.classes], "status": asg.status},
        "upcoming": None if upcoming is None else {"id": upcoming.pk, "image_url": image_url(upcoming)},
        "project_state": project.state if project is not None else None,
        "progress": progress, "message": message,
    }


def _no_work_message(user, project: Project | None) -> str:
    standing = selectors.labeler_standing(user)
    state = project.state if project else None
    if standing == "suspended":
        return "Your account is paused for a review by the project staff; please contact them."
    if standing == "flagged":
        return ("Other annotators are double-checking some of your recent answers. New work comes back "
                "when the check is done; nothing you did is lost.")
    if project is not None and project.is_paused and state != Project.State.FINISHED:
        return "The project staff paused this project; work comes back when they resume it."
    if state == Project.State.UPDATING:
        return "The model is updating; new work will appear shortly."
    if state == Project.State.FINISHED:
        return "This project is finished. Thank you!"
    if project is not None and not user.is_staff and not selectors.may_claim(user, project):
        return "You are not among this project's annotators (any more); the project staff choose who labels it."
    if project is not None:
        waiting = selectors.work_waiting_for_others(user, project)
        if waiting["queued"]:
            lease = queue.lease_seconds()
            span = f"{lease:.0f} s" if lease < 120 else f"{lease / 60:.0f} min"
            if waiting["checks_of_mine"] == waiting["queued"]:
                return ("Nothing for you right now: the images left in this batch are checks of your own answers, "
                        "which other annotators make. New work comes when they are done; nothing you did is lost.")
            return ("Nothing for you right now: the images left in this batch wait for other annotators (images "
                    "you skipped or already labeled, or checks of your own answers). New work comes when someone "
                    f"else labels them; an image you skipped leaves the batch after {span} if nobody else takes it.")
    return ("Nothing to label right now: every image of this batch is taken. New work comes when the batch "
            "is done, or when someone else's time on an image runs out.")


class AnswerView(APIView):
    permission_classes = [IsAnnotator]

    @extend_schema(summary="Answer an assignment", request=AnswerInSerializer,
                   responses={201: AnnotationOutSerializer, 200: AnnotationOutSerializer})
    def post(self, request, assignment_id: int):
        fields = _plain_answer(request.data)
        if fields is None:  # anything unusual: the serializer validates it and words the errors
            ser = AnswerInSerializer(data=request.data)
            if not ser.is_valid():
                return _invalid(ser)
            fields = ser.validated_data["label"], ser.validated_data.get("seconds")
        try:
            annotation, created = answering.submit_annotation(
                user=request.user, assignment_id=assignment_id, label=fields[0], seconds=fields[1])
        except workflow.LabelingError as exc:
            return _error(exc)
        return Response(annotation_payload(annotation),
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def _plain_answer(data) -> tuple[object, float | None] | None:
    """(label, seconds) of a well-formed answer body, or None to let the serializer decide.

    The annotators' hot path: building DRF serializers costs more CPU than the database write
    (fields are deep-copied per instance). Takes only bodies ``AnswerInSerializer`` accepts
    unchanged (label: any JSON, checked by the service; seconds: absent, null, or a finite
    float or an int below 2**53, >= 0); anything else, e.g. an int too large for a float,
    gets the serializer's own message.
    """
    if type(data) is not dict or "label" not in data or not data.keys() <= {"label", "seconds"}:
        return None
    seconds = data.get("seconds")
    if seconds is not None and not (
            (type(seconds) is int and 0 <= seconds < 2**53)
            or (type(seconds) is float and seconds >= 0 and math.isfinite(seconds))):
        return None
    return data["label"], (float(seconds) if seconds is not None else None)


_DATETIME = DateTimeField()  # DRF's own output format (ISO 8601, "Z" for UTC)


def annotation_payload(annotation) -> dict:
    """``AnnotationOutSerializer(annotation).data`` without building a serializer per request."""
    return {"id": annotation.pk, "assignment": annotation.assignment_id, "label": annotation.label,
            "seconds": None if annotation.seconds is None else float(annotation.seconds),
            "created_at": _DATETIME.to_representation(annotation.created_at)}


class SkipView(APIView):
    permission_classes = [IsAnnotator]

    @extend_schema(summary="Skip an assignment (the item returns to the queue for someone else)", request=None,
                   responses=AssignmentOutSerializer)
    def post(self, request, assignment_id: int):
        try:
            asg = answering.skip_assignment(user=request.user, assignment_id=assignment_id)
        except workflow.LabelingError as exc:
            return _error(exc)
        return Response(AssignmentOutSerializer(asg).data)


class UndoView(APIView):
    permission_classes = [IsAnnotator]

    @extend_schema(summary="Undo your last answer or skip (within the undo window, batch still open)",
                   request=UndoInSerializer, responses=AssignmentOutSerializer)
    def post(self, request):
        ser = UndoInSerializer(data=request.data)
        if not ser.is_valid():
            return _invalid(ser)
        try:
            asg = answering.undo(user=request.user, assignment_id=ser.validated_data.get("assignment"))
        except workflow.LabelingError as exc:
            return _error(exc)
        return Response(AssignmentOutSerializer(asg).data)


class ProjectStatusView(APIView):
    permission_classes = [IsAnnotator]

    @extend_schema(summary="Project status (staff get history, config and counts)", responses=StatusOutSerializer)
    def get(self, request, project_id: int):
        project = _project_or_404(request, project_id)
        return Response(StatusOutSerializer(status_payload(request.user, project)).data)


class ProjectMetricsView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(summary="Accuracy history of the live loop (staff)", responses=MetricSerializer(many=True))
    def get(self, request, project_id: int):
        project = get_object_or_404(Project, pk=project_id)
        return Response(MetricSerializer(selectors.metric_history(project), many=True).data)


class _Echo:
    def write(self, value):
        return value


def export_response(project: Project, kind: str, fmt: str):
    rows = selectors.export_raw_rows(project) if kind == "raw" else selectors.export_resolved_rows(project)
    fields = selectors.RAW_FIELDS if kind == "raw" else selectors.RESOLVED_FIELDS
    filename = f"project-{project.pk}-{kind}.{fmt}"
    if fmt == "csv":
        writer = csv.DictWriter(_Echo(), fieldnames=fields)

        def stream():
            yield writer.writeheader()
            for row in rows:
                yield writer.writerow({k: "" if row[k] is None else row[k] for k in fields})

        response = StreamingHttpResponse(stream(), content_type="text/csv; charset=utf-8")
    else:
        payload = {"project": {"id": project.pk, "name": project.name, "classes": project.classes},
                   "kind": kind, "rows": list(rows)}
        response = HttpResponse(json.dumps(payload, indent=1), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class ExportView(APIView):
    permission_classes = [IsStaff]

    @extend_schema(summary="Export annotations (staff): raw = one row per annotation, resolved = one per item",
                   parameters=[OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=["raw", "resolved"]),
                               OpenApiParameter("fmt", str, OpenApiParameter.PATH, enum=["csv", "json"])],
                   responses={(200, "text/csv"): OpenApiTypes.BINARY, (200, "application/json"): OpenApiTypes.OBJECT})
    def get(self, request, project_id: int, kind: str, fmt: str):
        project = get_object_or_404(Project, pk=project_id)
        if kind not in ("raw", "resolved") or fmt not in ("csv", "json"):
            return Response({"detail": "kind must be raw or resolved, format csv or json"}, status=400)
        return export_response(project, kind, fmt)


__all__ = ["NextAssignmentView", "AnswerView", "SkipView", "UndoView", "ProjectStatusView", "ProjectMetricsView",
           "ExportView"]
