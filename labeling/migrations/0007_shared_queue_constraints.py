"""The shared queue with leases: indexes and the constraints the database enforces."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('labeling', '0006_shared_queue_data'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='assignment',
            index=models.Index(condition=models.Q(('status', 'queued')), fields=['batch', 'id'], name='labeling_asg_queue'),
        ),
        migrations.AddIndex(
            model_name='assignment',
            index=models.Index(condition=models.Q(('status', 'open')), fields=['batch', 'lease_until'], name='labeling_asg_claims'),
        ),
        migrations.AddConstraint(
            model_name='assignment',
            constraint=models.UniqueConstraint(condition=models.Q(('kind', 'first_label'), models.Q(('status', 'skipped'), _negated=True)), fields=('item', 'batch'), name='labeling_one_first_label_per_item_batch'),
        ),
        migrations.AddConstraint(
            model_name='assignment',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('status', 'queued'), ('labeler__isnull', True)), models.Q(models.Q(('status', 'queued'), _negated=True), ('labeler__isnull', False)), _connector='OR'), name='labeling_queued_iff_unclaimed'),
        ),
        migrations.AddConstraint(
            model_name='assignment',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('status', 'open'), _negated=True), ('lease_until__isnull', False), _connector='OR'), name='labeling_claim_has_lease'),
        ),
        migrations.AddConstraint(
            model_name='assignment',
            constraint=models.CheckConstraint(condition=models.Q(('status__in', ['queued', 'open', 'done', 'skipped'])), name='labeling_assignment_status_valid'),
        ),
    ]
