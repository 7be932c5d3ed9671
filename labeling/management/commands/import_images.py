"""Import images into a draft project from the command line (large pools, server folders)."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from labeling import importers
from labeling.models import Project


class Command(BaseCommand):
    help = ("Import a .zip, a folder (one sub-folder per class optional) or a data set (digits, cifar2, cifar10, "
            ".npz, CIFAR-10 archive) into a draft project. Refuses everything on any bad file unless --skip-invalid.")

    def add_arguments(self, parser):
        parser.add_argument("project", help="project id or name")
        parser.add_argument("source", help="path to a .zip / folder / .npz / .tar.gz, or digits|cifar2|cifar10")
        parser.add_argument("--skip-invalid", action="store_true", help="import the valid files, list the others")
        parser.add_argument("--pool-size", type=int, default=None, help="data sets: pool images to import")
        parser.add_argument("--upscale", type=int, default=1, help="data sets: nearest-neighbour upscaling")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **opts):
        ref = opts["project"]
        project = Project.objects.filter(pk=int(ref)).first() if ref.isdigit() else Project.objects.filter(name=ref).first()
        if project is None:
            raise CommandError(f"no project {ref!r}")
        source, strict = opts["source"], not opts["skip_invalid"]
        try:
            if source.lower().endswith(".zip"):
                report = importers.import_zip(project=project, file=source, strict=strict)
            elif source in ("digits", "cifar2", "cifar10") or source.lower().endswith((".npz", ".tar.gz", ".tgz", ".tar")):
                report = importers.import_dataset(project=project, spec=source, pool_size=opts["pool_size"],
                                                  upscale=opts["upscale"], seed=opts["seed"], check_roots=False,
                                                  strict=strict)
            else:
                report = importers.import_folder(project=project, path=source, strict=strict, check_roots=False)
        except importers.ImportFailed as exc:
            raise CommandError(str(exc)) from None
        for name, reason in report.errors:
            self.stderr.write(f"refused {name}: {reason}")
        for name, reason in report.skipped:
            self.stdout.write(f"ignored {name}: {reason}")
        self.stdout.write(report.summary())
        if not report.ok:
            raise CommandError("import failed")
