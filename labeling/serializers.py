"""Serializers of the labeling API: thin shapes, no logic.

What an annotator sees of an assignment is deliberately small: an id, an opaque image URL, the
class names and their progress. Never the item's file name, ground truth, secured flag, the
assignment kind (first label or re-annotation), trust or anyone else's labels.
"""
from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


@extend_schema_field({"type": "integer", "minimum": 0})
class LabelField(serializers.JSONField):
    """Any JSON on input, so that a wrong type gets our own clear message (answering.parse_label);
    the schema says what is valid: a class index."""


class AnswerInSerializer(serializers.Serializer):
    label = LabelField(allow_null=True, help_text="Class index, 0 .. len(classes) - 1.")
    seconds = serializers.FloatField(required=False, allow_null=True, min_value=0,
                                     help_text="Seconds the annotator took (optional).")


class UndoInSerializer(serializers.Serializer):
    assignment = serializers.IntegerField(required=False, help_text="Default: your last answer or skip.")


class ProgressSerializer(serializers.Serializer):
    batch_done = serializers.IntegerField(help_text="Items of the open batch labeled so far (by anyone).")
    batch_total = serializers.IntegerField(help_text="Items of the open batch (skipped items that left it aside).")
    bought = serializers.IntegerField(help_text="Labels bought in the project so far.")
    budget = serializers.IntegerField(allow_null=True, help_text="The project's label budget (null: none).")


class AssignmentOutSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    project = serializers.IntegerField(source="batch.project_id")
    project_name = serializers.CharField(source="batch.project.name")
    image_url = serializers.SerializerMethodField()
    classes = serializers.ListField(child=serializers.CharField(), source="batch.project.classes")
    status = serializers.CharField()

    def get_image_url(self, obj) -> str:
        return reverse("labeling:assignment-image", args=[obj.pk])


class UpcomingSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    image_url = serializers.SerializerMethodField()

    def get_image_url(self, obj) -> str:
        return reverse("labeling:assignment-image", args=[obj.pk])


class NextOutSerializer(serializers.Serializer):
    assignment = AssignmentOutSerializer(allow_null=True)
    upcoming = UpcomingSerializer(allow_null=True, required=False,
                                  help_text="With prefetch: the item after this one (load its image ahead).")
    project_state = serializers.CharField(allow_null=True)
    progress = ProgressSerializer(allow_null=True)
    message = serializers.CharField()


class AnnotationOutSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    assignment = serializers.IntegerField(source="assignment_id")
    label = serializers.IntegerField()
    seconds = serializers.FloatField(allow_null=True)
    created_at = serializers.DateTimeField()


class MetricSerializer(serializers.Serializer):
    iteration = serializers.IntegerField()
    labels_bought = serializers.IntegerField()
    n_labeled = serializers.IntegerField()
    n_artificial = serializers.IntegerField()
    secured_accuracy = serializers.FloatField(allow_null=True)
    ground_truth_accuracy = serializers.FloatField(allow_null=True)
    check_triggered = serializers.BooleanField()
    reannotated = serializers.IntegerField()
    discarded = serializers.IntegerField()
    min_perturbation = serializers.FloatField(allow_null=True)
    craft_failed = serializers.IntegerField(
        help_text="Attacks (item x method) that found no example across the boundary: dropped, not copied.")
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField()


class StatusOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    state = serializers.CharField()
    paused = serializers.BooleanField(help_text="Staff paused the project: no work is handed out.")
    iteration = serializers.IntegerField()
    classes = serializers.ListField(child=serializers.CharField())
    progress = ProgressSerializer()
    # staff only (absent for annotators)
    stop_reason = serializers.CharField(required=False)
    labels_bought = serializers.IntegerField(required=False)
    n_items = serializers.IntegerField(required=False)
    config = serializers.DictField(required=False)
    history = MetricSerializer(many=True, required=False)
