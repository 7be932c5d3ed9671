"""Create the digits demo project (idempotent): the demo annotators are its members, its first batch is open."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from labeling import importers, membership, services
from labeling.models import ANNOTATORS_GROUP, Project

from .setup_demo import DEMO_ANNOTATORS

DEMO_NAME = "Digits demo"


class Command(BaseCommand):
    help = ("Create a demo project from scikit-learn's digits (upscaled PNGs with hidden ground truth, "
            "a secured set) and open its first batch for the demo annotators. Does nothing if it exists.")

    def add_arguments(self, parser):
        parser.add_argument("--name", default=DEMO_NAME)
        parser.add_argument("--pool-size", type=int, default=330, help="images imported (secured set included)")
        parser.add_argument("--secured-size", type=int, default=30)
        parser.add_argument("--initial-size", type=int, default=20)
        parser.add_argument("--batch-size", type=int, default=10)
        parser.add_argument("--budget", type=int, default=300)
        parser.add_argument("--strategy", default="robust")
        parser.add_argument("--h", type=int, default=2, help="re-annotators per item (3 demo annotators: 2 others)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-start", action="store_true", help="leave the project as a draft")

    def handle(self, *args, **opts):
        existing = Project.objects.filter(name=opts["name"]).first()
        if existing is not None:
            self.stdout.write(f"Demo project {existing.name!r} already exists (state: {existing.state}).")
            return
        demo = [name for name, _ in DEMO_ANNOTATORS]
        if get_user_model().objects.filter(username__in=demo, groups__name=ANNOTATORS_GROUP).count() < len(demo):
            call_command("setup_demo", stdout=self.stdout)
        from learner.data import load_digits

        data = load_digits(pool_size=opts["pool_size"], seed=opts["seed"])
        config = {
            "strategy": opts["strategy"], "batch_size": opts["batch_size"], "initial_size": opts["initial_size"],
            "secured_size": opts["secured_size"], "h": opts["h"], "budget": opts["budget"], "epsilon": 0.05,
            "backbone": "flatten", "feature_size": 8, "channels": 1, "seed": opts["seed"], "n_clusters": 10,
        }
        project = services.create_project(
            name=opts["name"], classes=list(data.classes), config=config,
            description=f"scikit-learn digits: {len(data.x_pool)} 8x8 images shown 8x upscaled; "
                        "ground truth kept hidden (secured set = admin-verified).")
        try:
            report = importers.import_arrays(project=project, images=data.x_pool, labels=data.y_pool,
                                             sources=[f"digits:pool[{k}]" for k in range(len(data.x_pool))], upscale=8)
        except importers.ImportFailed as exc:
            project.delete()
            raise CommandError(str(exc)) from None
        if not report.ok:
            project.delete()
            raise CommandError(report.summary())
        self.stdout.write(f"Created {project.name!r}: {report.summary()}.")
        membership.set_members(project=project, users=demo)  # staff change them on the project's page
        self.stdout.write(f"Members: {', '.join(demo)}.")
        if opts["no_start"]:
            return
        batch = services.start_project(project=project)
        self.stdout.write(f"First batch opened: {batch.assignments.count()} items in the members' shared queue.")
