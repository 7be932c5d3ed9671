"""Serializers of the staff API (``labeling.staff_api``): input shapes and what the reads return.

Validation of meaning stays in the services: the settings are checked by
``learner.live.LiveConfig.from_dict`` (through ``services.create_project``), class names by
``labeling.models.validate_classes``, images by ``labeling.importers``.
"""
from __future__ import annotations

import json

from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="Why the request was refused, in one sentence.")


class ProjectCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    classes = serializers.ListField(child=serializers.CharField(max_length=100), min_length=2, max_length=1000,
                                    help_text="Class names, in the order of their label indices.")
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=20000,
                                        help_text="Instructions and background shown to the annotators.")
    config = serializers.DictField(required=False, default=dict,
                                   help_text="Active-learning settings (learner.live.LiveConfig); absent keys "
                                             "take their defaults, unknown keys are refused.")

    def validate_config(self, value: dict) -> dict:
        text = json.dumps(value, ensure_ascii=False, default=str)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise serializers.ValidationError("the settings hold characters that are not valid Unicode") from None
        if "\x00" in text:
            raise serializers.ValidationError("the settings hold a NUL character")
        return value


class OpenBatchSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    iteration = serializers.IntegerField()
    phase = serializers.CharField()
    strategy = serializers.CharField()
    done = serializers.IntegerField(help_text="Assignments answered or skipped.")
    total = serializers.IntegerField()


class ProjectSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    classes = serializers.ListField(child=serializers.CharField())
    config = serializers.DictField()
    state = serializers.CharField(help_text="draft, labeling, updating (the model is learning) or finished.")
    paused = serializers.BooleanField(help_text="Staff paused it: no work is handed out.")
    paused_at = serializers.DateTimeField(allow_null=True)
    iteration = serializers.IntegerField()
    stop_reason = serializers.CharField()
    loop_error = serializers.CharField(help_text="Last failure of the loop task (empty when none).")
    n_items = serializers.IntegerField(help_text="Images in the pool.")
    n_ground_truth = serializers.IntegerField(help_text="Images with an imported (hidden) ground truth.")
    labels_bought = serializers.IntegerField()
    open_batch = OpenBatchSerializer(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ProjectListItemSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    state = serializers.CharField()
    paused = serializers.BooleanField(source="is_paused")
    iteration = serializers.IntegerField()
    n_items = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class UploadSerializer(serializers.Serializer):
    files = serializers.ListField(child=serializers.FileField(), required=False, allow_empty=False,
                                  help_text="Image files (repeat the field); they get no class, so no ground truth.")
    archive = serializers.FileField(required=False,
                                    help_text="Or a .zip of images (top level, or one folder per class: the folder "
                                              "name becomes the hidden ground truth).")
    skip_invalid = serializers.BooleanField(required=False, default=False,
                                            help_text="Import the valid files and list the refused ones "
                                                      "(default: refuse the whole import on any problem).")

    def validate(self, data):
        if bool(data.get("files")) == bool(data.get("archive")):
            raise serializers.ValidationError("give either files or an archive (exactly one)")
        return data


class ImportSourceSerializer(serializers.Serializer):
    folder = serializers.CharField(required=False, max_length=4096,
                                   help_text="A folder on the server, inside the allowed import roots.")
    dataset = serializers.CharField(required=False, max_length=4096,
                                    help_text="Or a data set: digits, cifar2, cifar10, or a path (inside the import "
                                              "roots) to a .npz or CIFAR-10 archive.")
    pool_size = serializers.IntegerField(required=False, min_value=1, max_value=10_000_000,
                                         help_text="Data sets: how many pool images.")
    upscale = serializers.IntegerField(required=False, min_value=1, max_value=32, default=1,
                                       help_text="Data sets: enlarge tiny images (nearest neighbour) for display.")
    skip_invalid = serializers.BooleanField(required=False, default=False)

    def validate(self, data):
        if bool(data.get("folder")) == bool(data.get("dataset")):
            raise serializers.ValidationError("give either folder or dataset (exactly one)")
        return data


class FileProblemSerializer(serializers.Serializer):
    file = serializers.CharField()
    reason = serializers.CharField()


class ImportReportSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="Images were imported (and, in strict mode, none was refused).")
    imported = serializers.IntegerField()
    strict = serializers.BooleanField()
    summary = serializers.CharField()
    errors = FileProblemSerializer(many=True, help_text="Refused files and why.")
    skipped = FileProblemSerializer(many=True, help_text="Ignored files (not images, system files).")
    n_items = serializers.IntegerField(help_text="Images in the pool after this import.")


class ImportRefusedSerializer(ImportReportSerializer):
    detail = serializers.CharField()


class StartedSerializer(serializers.Serializer):
    project = ProjectSerializer()
    batch = OpenBatchSerializer()


class BatchCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    open = serializers.IntegerField()
    waiting = serializers.IntegerField(help_text="Held by no one yet (the next eligible annotator claims them).")
    done = serializers.IntegerField()
    skipped = serializers.IntegerField()


class BatchKindsSerializer(serializers.Serializer):
    first_label = serializers.IntegerField()
    reannotation = serializers.IntegerField()
    secured = serializers.IntegerField()


class BatchSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    iteration = serializers.IntegerField()
    strategy = serializers.CharField()
    phase = serializers.CharField(help_text="labeling, reannotation or closed.")
    opened_at = serializers.DateTimeField()
    frozen_at = serializers.DateTimeField(allow_null=True, help_text="When the loop task started on it.")
    closed_at = serializers.DateTimeField(allow_null=True)
    assignments = BatchCountsSerializer()
    kinds = BatchKindsSerializer()


class AnnotatorProgressSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    assigned = serializers.IntegerField(help_text="Assignments in this project, every batch.")
    done = serializers.IntegerField()
    skipped = serializers.IntegerField()
    open = serializers.IntegerField()
    batch_assigned = serializers.IntegerField(help_text="Assignments in the open batch.")
    batch_finished = serializers.IntegerField(help_text="Of those, answered or skipped.")
    last_answer_at = serializers.DateTimeField(allow_null=True)
    median_seconds = serializers.FloatField(allow_null=True, help_text="Median time per label.")
    agreement = serializers.FloatField(allow_null=True,
                                       help_text="Share of labels equal to the verified label (secured set or "
                                                 "re-annotation consensus), over agreement_n labels.")
    agreement_n = serializers.IntegerField()
    ground_truth_accuracy = serializers.FloatField(allow_null=True,
                                                   help_text="Share equal to the imported ground truth.")
    ground_truth_n = serializers.IntegerField()
    trust = serializers.FloatField()
    standing = serializers.ChoiceField(choices=["active", "flagged", "suspended"])
