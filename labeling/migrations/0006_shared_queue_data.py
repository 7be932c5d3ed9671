"""The shared queue with leases and project members: existing rows.

``paused`` (nobody held it) becomes ``queued``; an ``open`` assignment of the old pre-cut shares
stays with its labeler, but its lease has already run out (anyone eligible may take it over; its
holder may still answer it until then). Each project gets as members the people who have had
work in it.
"""
from django.db import migrations
from django.utils import timezone


def to_shared_queue(apps, schema_editor):
    Assignment = apps.get_model("labeling", "Assignment")
    Assignment.objects.filter(status="paused").update(status="queued", labeler=None)
    Assignment.objects.filter(status="open", labeler__isnull=True).update(status="queued")
    Assignment.objects.filter(status="open").update(lease_until=timezone.now())


def members_from_history(apps, schema_editor):
    Assignment = apps.get_model("labeling", "Assignment")
    ProjectMember = apps.get_model("labeling", "ProjectMember")
    pairs = set(Assignment.objects.filter(labeler__isnull=False).values_list("batch__project_id", "labeler_id"))
    ProjectMember.objects.bulk_create([ProjectMember(project_id=p, user_id=u) for p, u in sorted(pairs)])


class Migration(migrations.Migration):

    dependencies = [
        ('labeling', '0005_shared_queue_fields'),
    ]

    operations = [
        migrations.RunPython(to_shared_queue, migrations.RunPython.noop),
        migrations.RunPython(members_from_history, migrations.RunPython.noop),
    ]
