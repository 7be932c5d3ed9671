"""Labeling data model (projects, items, batches, assignments, annotations).

Models hold data and invariants only; writes go through ``labeling/services.py`` and reads
through ``labeling/selectors.py``. The invariants the database itself enforces:

* an item gets at most one live *first label* assignment per batch (a skipped one is a record and
  does not count), and a labeler at most one assignment per item and batch, so nobody gets an
  item twice in a batch (a skip record keeps its labeler: they are not handed that item again);
* an assignment waits in the shared queue exactly when nobody holds it (``queued`` <=> no
  labeler), and a claim (``open``) always has a lease;
* a re-annotation never goes to the item's original labeler (``original_labeler`` is stored on
  the re-annotation and a CHECK constraint compares the two columns);
* an assignment has at most one annotation (one-to-one), so a double submit cannot create two;
* one batch per (project, iteration) and one metric row per (project, iteration), so a
  redelivered loop task cannot open a second batch.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q

ANNOTATORS_GROUP = "annotators"


def validate_classes(value) -> None:
    if not isinstance(value, list) or len(value) < 2:
        raise ValidationError("classes must be a JSON list of at least two class names")
    if len(value) > 1000:
        raise ValidationError("at most 1000 classes")
    names = [str(v).strip() if isinstance(v, (str, int)) else None for v in value]
    if any(not n for n in names):
        raise ValidationError("every class name must be a non-empty string")
    if len(set(names)) != len(names):
        raise ValidationError("class names must be unique")
    for n in names:
        if "/" in n or "\\" in n or n in {".", ".."} or len(n) > 100:
            raise ValidationError(f"invalid class name {n!r} (no slashes, at most 100 characters)")


def validate_config(value) -> None:
    from learner.live import LiveConfig

    if not isinstance(value, dict):
        raise ValidationError("config must be a JSON object")
    try:
        cfg = LiveConfig.from_dict(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    # engine settings only the simulator drives so far (manage.py simulate); refused here rather
    # than accepted and silently run another way
    if cfg.redundancy > 1:
        raise ValidationError("redundancy > 1 (the redundancy baselines) runs in `manage.py simulate` only")


class Project(models.Model):
    """A labeling project: a pool of images, its classes and its active-learning settings."""

    class State(models.TextChoices):
        DRAFT = "draft", "draft"
        LABELING = "labeling", "labeling"
        UPDATING = "updating", "model updating"
        FINISHED = "finished", "finished"

    # Allowed state changes (anything else is a bug in a service).
    TRANSITIONS = {
        State.DRAFT: {State.LABELING},
        State.LABELING: {State.UPDATING, State.FINISHED},
        State.UPDATING: {State.LABELING, State.FINISHED},
        State.FINISHED: set(),
    }

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True, help_text="What the data set is and where it came from.")
    classes = models.JSONField(validators=[validate_classes],
                               help_text='JSON list of class names, e.g. ["airplane", "frog"].')
    config = models.JSONField(default=dict, blank=True, validators=[validate_config],
                              help_text="Active-learning settings (learner.live.LiveConfig): strategy, "
                                        "batch_size, initial_size, secured_size, epsilon, h, budget, "
                                        "target, backbone, feature_size, channels, ...")
    state = models.CharField(max_length=16, choices=State.choices, default=State.DRAFT)
    iteration = models.PositiveIntegerField(default=0, help_text="Iteration of the open (or last) batch.")
    stop_reason = models.CharField(max_length=64, blank=True)
    loop_error = models.TextField(blank=True, help_text="Last failure of the loop task (cleared on success).")
    paused_at = models.DateTimeField(null=True, blank=True,
                                     help_text="Set while staff have paused the project: no work is handed out "
                                               "(answers to work already shown are kept; the loop goes on).")
    storage_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False,
                                   help_text="Folder name of the project's images and caches.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="ProjectMember",
                                     through_fields=("project", "user"), related_name="member_projects",
                                     blank=True, help_text="The annotators staff chose for this project: only they "
                                                           "are handed its work.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=["draft", "labeling", "updating", "finished"]),
                                   name="labeling_project_state_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def live_config(self):
        from learner.live import LiveConfig

        return LiveConfig.from_dict(self.config)

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def can_transition(self, to: str) -> bool:
        return to in self.TRANSITIONS[self.State(self.state)]

    def clean(self) -> None:
        validate_classes(self.classes)
        validate_config(self.config)


# Project states in which an open batch that the loop task has not frozen hands out work and takes
# answers: "updating" too, because with ``pipeline`` people label the younger batch while the
# model updates with the older one (without it, an updating project's open batch has no work left).
TAKES_ANSWERS = (Project.State.LABELING.value, Project.State.UPDATING.value)


class ProjectMember(models.Model):
    """An annotator staff chose for a project (writes: :mod:`labeling.membership`)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="project_memberships")
    added_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "user"]
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="labeling_one_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project}"


def item_upload_to(instance: "Item", filename: str) -> str:
    return f"labeling/{instance.project.storage_key}/{uuid.uuid4().hex}.png"


class Item(models.Model):
    """One image of a project's pool.

    ``index`` is the item's row in the project's feature cache (0..N-1, dense). The image file is
    a re-encoded PNG with a random name; annotators only ever see it through their assignment's
    URL. ``ground_truth`` (hidden from annotators) comes from the import (class folders, data
    set labels); secured items with a ground truth count as admin-verified.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    index = models.PositiveIntegerField()
    image = models.ImageField(upload_to=item_upload_to, max_length=300)
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    ground_truth = models.SmallIntegerField(null=True, blank=True)
    source = models.CharField(max_length=500, blank=True, help_text="Where the image came from (file name).")
    is_secured = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "index"]
        constraints = [
            models.UniqueConstraint(fields=["project", "index"], name="labeling_item_unique_index"),
            models.CheckConstraint(condition=Q(ground_truth__isnull=True) | Q(ground_truth__gte=0),
                                   name="labeling_item_ground_truth_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.project_id}#{self.index}"


class QueryBatch(models.Model):
    """The items queried in one iteration, and the phase of its processing.

    Phases: ``labeling`` (first labels; at iteration 0 also the secured set's labels) ->
    optionally ``reannotation`` (h other labelers re-label suspicious or all of D') -> closed.
    ``frozen_at`` is set when the loop task starts on the batch: undo is refused from then on.
    """

    class Phase(models.TextChoices):
        LABELING = "labeling", "labeling"
        REANNOTATION = "reannotation", "re-annotation"
        CLOSED = "closed", "closed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="batches")
    iteration = models.PositiveIntegerField()
    strategy = models.CharField(max_length=32)
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.LABELING)
    loop_state = models.JSONField(default=dict, blank=True,
                                  help_text="Results carried between the phases of the loop task.")
    opened_at = models.DateTimeField(auto_now_add=True)
    frozen_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    bought_before = models.PositiveIntegerField(null=True, blank=True,
                                                help_text="Labels bought before the batch opened (progress adds "
                                                          "the batch's own answers instead of counting the project).")

    class Meta:
        ordering = ["project", "iteration"]
        verbose_name_plural = "query batches"
        constraints = [
            models.UniqueConstraint(fields=["project", "iteration"], name="labeling_batch_unique_iteration"),
            models.CheckConstraint(condition=Q(closed_at__isnull=True) | Q(phase="closed"),
                                   name="labeling_batch_closed_phase"),
        ]

    def __str__(self) -> str:
        return f"{self.project} / batch {self.iteration}"

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


class Assignment(models.Model):
    """One item to be labeled once in one batch: a slot of the batch's shared queue.

    ``queued``: waiting for a labeler (no labeler). Someone who asks for work claims the first
    queued slot they may label (:mod:`labeling.queue`): it becomes ``open`` with their name and a
    lease; after the lease anyone eligible may take it over (the holder may answer until then).
    ``done``: answered. ``skipped``: a record that this labeler skipped it; the item went back to
    the queue as a new slot (``requeued_as``) unless nobody else could label it.
    """

    class Kind(models.TextChoices):
        FIRST_LABEL = "first_label", "first label"
        REANNOTATION = "reannotation", "re-annotation"
        SECURED = "secured", "secured set"

    class Status(models.TextChoices):
        QUEUED = "queued", "waiting for a labeler"
        OPEN = "open", "claimed"
        DONE = "done", "done"
        SKIPPED = "skipped", "skipped"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments")
    batch = models.ForeignKey(QueryBatch, on_delete=models.CASCADE, related_name="assignments")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                related_name="labeling_assignments",
                                help_text="Who claimed it (empty while it waits in the queue).")
    original_labeler = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                         on_delete=models.PROTECT, related_name="+",
                                         help_text="Who may never take it: re-annotations, the labeler whose label "
                                                   "is under review; re-queued first labels, the one whose label "
                                                   "was discarded.")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.FIRST_LABEL)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    lease_until = models.DateTimeField(null=True, blank=True,
                                       help_text="End of the claim: then anyone eligible may take it over.")
    prefetched = models.BooleanField(default=False,
                                     help_text="Claimed ahead so the page can preload the image; anyone who runs "
                                               "out of work may take it over.")
    requeued_as = models.OneToOneField("self", null=True, blank=True, on_delete=models.SET_NULL,
                                       related_name="requeued_from",
                                       help_text="A skip: the slot that put the item back in the queue.")
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch", "id"]
        indexes = [
            models.Index(fields=["labeler", "status"], name="labeling_asg_labeler_status"),
            # batch completion (any queued/open left?) and progress counts
            models.Index(fields=["batch", "status"], name="labeling_asg_batch_status"),
            models.Index(fields=["batch", "labeler", "status"], name="labeling_asg_batch_lab_status"),
            # the shared queue: the next waiting slot in the batch's order, and expired claims
            models.Index(fields=["batch", "id"], condition=Q(status="queued"), name="labeling_asg_queue"),
            models.Index(fields=["batch", "lease_until"], condition=Q(status="open"), name="labeling_asg_claims"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["item", "batch"], condition=Q(kind="first_label") & ~Q(status="skipped"),
                                    name="labeling_one_first_label_per_item_batch"),
            models.UniqueConstraint(fields=["item", "batch", "labeler"],
                                    name="labeling_one_assignment_per_labeler_item_batch"),
            models.CheckConstraint(condition=~Q(kind="reannotation") | Q(original_labeler__isnull=False),
                                   name="labeling_reannotation_has_original"),
            models.CheckConstraint(condition=~Q(labeler=F("original_labeler")),
                                   name="labeling_reannotation_not_original_labeler"),
            models.CheckConstraint(condition=(Q(status="queued") & Q(labeler__isnull=True))
                                   | (~Q(status="queued") & Q(labeler__isnull=False)),
                                   name="labeling_queued_iff_unclaimed"),
            models.CheckConstraint(condition=~Q(status="open") | Q(lease_until__isnull=False),
                                   name="labeling_claim_has_lease"),
            models.CheckConstraint(condition=Q(status__in=["queued", "open", "done", "skipped"]),
                                   name="labeling_assignment_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of item {self.item_id} for {self.labeler_id} ({self.status})"


class Annotation(models.Model):
    """The label a labeler gave in answer to an assignment (at most one per assignment)."""

    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="annotation")
    label = models.PositiveSmallIntegerField()
    seconds = models.FloatField(null=True, blank=True, help_text="Time the labeler took.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"label {self.label} for assignment {self.assignment_id}"


class LabelerProfile(models.Model):
    """Per-annotator state the loop needs: trust bookkeeping and the suspended/flagged gates.

    Flagged labelers get no new work until a staff member reviews them; suspended labelers get no
    work and their unverified labels weigh 0. (This may move to the ``trust`` app later.)
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="labeler_profile")
    is_suspended = models.BooleanField(default=False)
    is_flagged = models.BooleanField(default=False)
    trust = models.FloatField(default=1.0)
    labels_given = models.PositiveIntegerField(default=0)
    checked = models.PositiveIntegerField(default=0)
    disagreements = models.PositiveIntegerField(default=0)
    alerts = models.PositiveIntegerField(default=0)
    cleared = models.JSONField(default=dict, blank=True,
                               help_text="Per project id: first labels an audit or a review already cleared "
                                         "(they do not count towards a new flag).")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(trust__gte=0) & Q(trust__lte=1), name="labeling_trust_in_unit_range"),
        ]

    def __str__(self) -> str:
        return f"profile of {self.user}"

    @property
    def weight(self) -> float:
        return 0.0 if self.is_suspended else max(float(self.trust), 0.0)


class IterationMetric(models.Model):
    """What one iteration of the live loop did (drawn on the staff project page)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="metrics")
    iteration = models.PositiveIntegerField()
    labels_bought = models.PositiveIntegerField()
    n_labeled = models.PositiveIntegerField()
    n_artificial = models.PositiveIntegerField(default=0)
    secured_accuracy = models.FloatField(null=True, blank=True)
    ground_truth_accuracy = models.FloatField(null=True, blank=True,
                                              help_text="Accuracy on imported ground truth (staff only).")
    check_triggered = models.BooleanField(default=False)
    reannotated = models.PositiveIntegerField(default=0)
    discarded = models.PositiveIntegerField(default=0)
    min_perturbation = models.FloatField(null=True, blank=True)
    craft_failed = models.PositiveIntegerField(
        default=0, help_text="Attacks (item x method) that found no example across the boundary: dropped, not copied.")
    started_at = models.DateTimeField(help_text="When the iteration's batch was opened.")
    finished_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "iteration"]
        constraints = [
            models.UniqueConstraint(fields=["project", "iteration"], name="labeling_metric_unique_iteration"),
        ]

    def __str__(self) -> str:
        return f"{self.project} iteration {self.iteration}"


# --------------------------------------------------------------------------------------
# The trust history. The loop (labeling.loop_step) writes it and the trust app's review pages
# read it; the models are defined here so that labeling never imports the trust app, and keep
# their app label "trust" (tables, migrations and the admin section are the trust app's).
# The per-labeler *state* (trust, flagged, suspended, counters) is LabelerProfile above.
# --------------------------------------------------------------------------------------


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
        app_label = "trust"
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
        REJECTED = "rejected", "rejected by every re-annotator, who disagree: item discarded"

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
        app_label = "trust"
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
        app_label = "trust"
        constraints = [models.UniqueConstraint(fields=["project", "labeler"], name="trust_one_confusion_per_labeler")]

    def __str__(self) -> str:
        return f"confusion of {self.labeler} in {self.project}"


class DiscardedAnnotation(models.Model):
    """An annotation an admin discarded: the loop no longer reads it (the row itself stays)."""

    annotation = models.OneToOneField("labeling.Annotation", on_delete=models.CASCADE, related_name="discard")
    event = models.ForeignKey(TrustEvent, on_delete=models.PROTECT, related_name="discarded_annotations")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "trust"

    def __str__(self) -> str:
        return f"discarded annotation {self.annotation_id}"


class TrustNoticeSeen(models.Model):
    """Up to when a staff member has seen the notices of labelers flagged or suspended by the rules
    (the banner on the staff pages lists the newer ones)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    seen_until = models.DateTimeField()

    class Meta:
        app_label = "trust"

    def __str__(self) -> str:
        return f"{self.user} saw trust notices until {self.seen_until:%Y-%m-%d %H:%M}"
