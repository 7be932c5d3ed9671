"""Trust models: the auditable history of trust changes, re-annotation rounds, confusion estimates.

The per-labeler *state* (trust score, flagged, suspended, counters) stays on
``labeling.LabelerProfile``: the loop, the eligibility query and the label weights already read
it there, and one row per labeler needs no synchronisation. This app owns what is new: every
change of that state as a :class:`TrustEvent`, each re-annotation as a
:class:`ReannotationRound`, each labeler's Dawid-Skene confusion matrix per project
(:class:`ConfusionEstimate`) and labels an admin discarded (:class:`DiscardedAnnotation`).
Rows are written by ``labeling/services.py`` (the loop) and ``trust/services.py`` (reviews).
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class TrustEvent(models.Model):
    """One change of a labeler's trust or state, with why it happened (append-only)."""

    class Reason(models.TextChoices):
        CONFIRMED = "confirmed", "label confirmed by the model"
        AGREED = "agreed", "re-annotators agreed with the label"
        DISAGREEMENT = "disagreement", "re-annotators consistently disagreed"
        ALERT = "alert", "high-confidence disagreement (alert)"
        SYSTEMATIC = "systematic_confusion", "systematic confusion (Dawid-Skene)"
        FLAGGED = "flagged", "flagged"
        SUSPENDED = "suspended", "suspended"
        REINSTATED = "reinstated", "reinstated (by an admin, or by the rules after an audit)"
        SUSPENDED_BY_ADMIN = "suspended_by_admin", "suspended by an admin"
        DISCARDED = "labels_discarded", "labels discarded by an admin"

    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="trust_events")
    project = models.ForeignKey("labeling.Project", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="trust_events")
    item = models.ForeignKey("labeling.Item", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.CharField(max_length=32, choices=Reason.choices)
    delta = models.FloatField(default=0.0, help_text="Change of the trust score.")
    trust_after = models.FloatField(help_text="Trust score after the change.")
    model_confidence = models.FloatField(null=True, blank=True,
                                         help_text="Model probability of the consensus (or confirmed) label.")
    original_label = models.SmallIntegerField(null=True, blank=True)
    consensus_label = models.SmallIntegerField(null=True, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", help_text="Staff member who acted (empty: the loop).")
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["labeler", "created_at"], name="trust_event_labeler_time")]
        constraints = [
            models.CheckConstraint(condition=Q(trust_after__gte=0) & Q(trust_after__lte=1),
                                   name="trust_event_trust_in_unit_range"),
        ]

    def __str__(self) -> str:
        return f"{self.labeler} {self.reason} {self.delta:+.3f}"


class ReannotationRound(models.Model):
    """An item's label sent to h other labelers: opened with the assignments, resolved after."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "pending"
        AGREED = "agreed", "agreed with the original"
        DISAGREED = "disagreed", "consistent disagreement"
        INCONSISTENT = "inconsistent", "inconsistent: item discarded"

    project = models.ForeignKey("labeling.Project", on_delete=models.CASCADE, related_name="reannotation_rounds")
    batch = models.ForeignKey("labeling.QueryBatch", on_delete=models.CASCADE, related_name="reannotation_rounds")
    item = models.ForeignKey("labeling.Item", on_delete=models.CASCADE, related_name="reannotation_rounds")
    original_annotation = models.ForeignKey("labeling.Annotation", null=True, blank=True, on_delete=models.SET_NULL,
                                            related_name="+")
    original_labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    original_label = models.SmallIntegerField()
    assignments = models.ManyToManyField("labeling.Assignment", related_name="reannotation_rounds", blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    consensus_label = models.SmallIntegerField(null=True, blank=True)
    prob_original = models.FloatField(null=True, blank=True, help_text="Model probability of the original label.")
    prob_consensus = models.FloatField(null=True, blank=True, help_text="Model probability of the consensus label.")
    opened_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "item"], name="trust_one_round_per_item_batch"),
            models.CheckConstraint(condition=Q(outcome="pending") | Q(resolved_at__isnull=False),
                                   name="trust_resolved_round_has_time"),
        ]

    def __str__(self) -> str:
        return f"round on item {self.item_id} ({self.outcome})"


class ConfusionEstimate(models.Model):
    """A labeler's confusion matrix in one project, estimated by Dawid-Skene EM (latest only)."""

    project = models.ForeignKey("labeling.Project", on_delete=models.CASCADE, related_name="confusion_estimates")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="confusion_estimates")
    matrix = models.JSONField(help_text="K x K: row = estimated true class, column = given label (rows sum to 1).")
    counts = models.JSONField(help_text="K x K expected counts behind the matrix.")
    n_labels = models.PositiveIntegerField(default=0)
    suspicious_pairs = models.JSONField(default=list, blank=True,
                                        help_text="[[true, given], ...] beyond the threshold.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "labeler"], name="trust_one_confusion_per_labeler")]

    def __str__(self) -> str:
        return f"confusion of {self.labeler} in {self.project}"


class DiscardedAnnotation(models.Model):
    """An annotation an admin discarded: the loop no longer reads it (the row itself stays)."""

    annotation = models.OneToOneField("labeling.Annotation", on_delete=models.CASCADE, related_name="discard")
    event = models.ForeignKey(TrustEvent, on_delete=models.PROTECT, related_name="discarded_annotations")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"discarded annotation {self.annotation_id}"
