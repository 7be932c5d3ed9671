"""Create the demo accounts (one admin, three annotators) so a newcomer can log in at once."""
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

DEMO_ADMIN = ("admin", "admin-demo-pass")
DEMO_ANNOTATORS = [("alice", "alice-demo-pass"), ("bob", "bob-demo-pass"), ("carol", "carol-demo-pass")]
ANNOTATORS_GROUP = "annotators"


class Command(BaseCommand):
    help = "Create demo users (idempotent). Never run this on a public deployment."

    def handle(self, *args, **options):
        User = get_user_model()
        group, _ = Group.objects.get_or_create(name=ANNOTATORS_GROUP)
        username, password = DEMO_ADMIN
        admin, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            admin.set_password(password)
            admin.save()
        for username, password in DEMO_ANNOTATORS:
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.save()
            user.groups.add(group)
        self.stdout.write("Demo logins:")
        self.stdout.write(f"  staff:      {DEMO_ADMIN[0]} / {DEMO_ADMIN[1]}")
        for username, password in DEMO_ANNOTATORS:
            self.stdout.write(f"  annotator:  {username} / {password}")
