"""factory_boy factories of the labeling app."""
from __future__ import annotations

import io
from datetime import timedelta

import factory
import numpy as np
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.utils import timezone
from factory.django import DjangoModelFactory
from PIL import Image

from labeling.models import ANNOTATORS_GROUP, Annotation, Assignment, Item, Project, QueryBatch

PASSWORD = "test-pass-123"


def png_bytes(size: int = 8, value: int = 0, mode: str = "L") -> bytes:
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 256, size=(size, size) if mode == "L" else (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class UserFactory(DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class AnnotatorFactory(UserFactory):
    username = factory.Sequence(lambda n: f"annotator{n}")

    @factory.post_generation
    def groups(obj, create, extracted, **kwargs):
        if create:
            obj.groups.add(Group.objects.get_or_create(name=ANNOTATORS_GROUP)[0])


class StaffFactory(UserFactory):
    username = factory.Sequence(lambda n: f"staff{n}")
    is_staff = True


class ProjectFactory(DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"project {n}")
    classes = factory.LazyFunction(lambda: ["cat", "dog", "bird"])
    config = factory.LazyFunction(lambda: {"strategy": "random", "batch_size": 4, "initial_size": 4,
                                           "secured_size": 2, "h": 2, "backbone": "flatten",
                                           "feature_size": 8, "channels": 1})


class ItemFactory(DjangoModelFactory):
    class Meta:
        model = Item

    project = factory.SubFactory(ProjectFactory)
    index = factory.LazyAttribute(lambda o: o.project.items.count())
    image = factory.LazyAttribute(lambda o: ContentFile(png_bytes(value=o.index), name="x.png"))
    ground_truth = factory.LazyAttribute(lambda o: o.index % len(o.project.classes))
    source = factory.LazyAttribute(lambda o: f"file-{o.index}.png")


class QueryBatchFactory(DjangoModelFactory):
    class Meta:
        model = QueryBatch

    project = factory.SubFactory(ProjectFactory)
    iteration = factory.LazyAttribute(lambda o: o.project.batches.count())
    strategy = "random"


class AssignmentFactory(DjangoModelFactory):
    class Meta:
        model = Assignment

    batch = factory.SubFactory(QueryBatchFactory)
    item = factory.LazyAttribute(lambda o: ItemFactory(project=o.batch.project))
    labeler = factory.SubFactory(AnnotatorFactory)
    kind = Assignment.Kind.FIRST_LABEL
    status = Assignment.Status.OPEN  # claimed by its labeler (pass labeler=None, status="queued" for a waiting slot)
    lease_until = factory.LazyFunction(lambda: timezone.now() + timedelta(hours=1))


class AnnotationFactory(DjangoModelFactory):
    class Meta:
        model = Annotation

    assignment = factory.SubFactory(AssignmentFactory, status=Assignment.Status.DONE)
    label = 0
