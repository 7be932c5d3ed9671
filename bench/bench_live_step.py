"""Benchmark: the time of one live loop step (``labeling.loop_step.advance_loop``) through the web
app's real services, with feature-space or pixel-space crafting (``augment_space``).

A throw-away SQLite project is filled with a pool of real images (digits or CIFAR-2), three
annotator accounts answer every batch truthfully through the shared queue (no HTTP, no Celery),
and each complete batch is processed by ``advance_loop`` in this process. Per batch it prints the
seconds of the batch's first loop call (audit, crafting, training, secured-set check; the call
that crafts) and of the whole batch (re-annotation rounds included), the rows crafted, the
attacks that failed and the smallest perturbation. The pool's features (and, with
``--training-mode finetune``, the last stage's inputs) are computed once before the first step
and timed apart; a finetune step also fine-tunes the stage and re-extracts the pool's features.

    .venv/bin/python bench/bench_live_step.py --dataset digits --augment-space pixel
    .venv/bin/python bench/bench_live_step.py --dataset cifar2 --pool-size 1000 --backbone resnet20 \\
        --weights ~/.cache/robustal/backbones/<name>/weights.pt --augment-space pixel --threads 1
    .venv/bin/python bench/bench_live_step.py --dataset cifar2 --pool-size 3000 --backbone resnet20 \\
        --weights ~/.cache/robustal/backbones/<name>/weights.pt --augment-space pixel --training-mode finetune

With ``--training-mode finetune`` the re-extraction of the pool after each refit
(``labeling.features.reextract``) is timed apart (column ``reextract s``: the calls of the batch,
summed, with the chunks train workers wrote). ``--workers N`` starts N Celery workers (solo pool,
``train`` queue, same database, broker folder and cache) that take the re-extraction chunk tasks;
the loop itself still runs in this process (the bench drops the loop tasks the answers enqueue).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", help="digits or cifar2 (or any learner.data.load_dataset spec)")
    parser.add_argument("--classes", default="", help="comma-separated classes (digits default: 1,4,7)")
    parser.add_argument("--pool-size", type=int, default=300)
    parser.add_argument("--batch", type=int, default=20, help="batch size = first batch size")
    parser.add_argument("--secured", type=int, default=30)
    parser.add_argument("--backbone", default=None, help="default: flatten (digits), resnet20 (otherwise)")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--augment-space", default="pixel", choices=("feature", "pixel"))
    parser.add_argument("--training-mode", default="head", choices=("head", "finetune"),
                        help="finetune: each step also fine-tunes the backbone's last stage (learner.finetune)")
    parser.add_argument("--batches", type=int, default=3, help="batches to process (iteration 0 crafts nothing)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="", help="ROBUSTAL_DEVICE for this run (default: auto)")
    parser.add_argument("--feature-chunk-size", type=int, default=None,
                        help="items per feature / re-extraction chunk task (default: the project default)")
    parser.add_argument("--workers", type=int, default=0,
                        help="Celery workers (solo, train queue) for the re-extraction chunk tasks")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-live-step-"))
    workers: list[subprocess.Popen] = []
    os.environ.update({
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}", "CELERY_BROKER_URL": "filesystem://",
        "ROBUSTAL_DATA_DIR": str(tmp), "MEDIA_ROOT": str(tmp / "media"), "ROBUSTAL_CACHE_DIR": str(tmp / "cache"),
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only"), "DEBUG": "1", "LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    })
    if args.device:
        os.environ["ROBUSTAL_DEVICE"] = args.device
    sys.path.insert(0, str(ROOT))
    try:
        import django

        django.setup()
        import torch

        torch.set_num_threads(args.threads)
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        from labeling import answering, features, importers, loop_step, membership, services
        from labeling.models import IterationMetric, Project, QueryBatch
        from learner import device, live
        from learner.data import load_dataset

        call_command("migrate", verbosity=0)
        digits = args.dataset == "digits"
        classes = [c for c in args.classes.split(",") if c] or (["1", "4", "7"] if digits else None)
        kw = {"classes": classes} if classes else {}
        data = load_dataset(args.dataset, pool_size=args.pool_size, test_size=0, seed=0, **kw)
        images = data.x_pool
        channels = 1 if images.ndim == 3 or images.shape[-1] == 1 else 3
        backbone = args.backbone or ("flatten" if digits else "resnet20")
        config = {"strategy": "robust", "batch_size": args.batch, "initial_size": args.batch,
                  "secured_size": args.secured, "h": 2, "backbone": backbone, "weights": args.weights,
                  "feature_size": int(images.shape[1]), "channels": channels, "n_clusters": 5,
                  "augment_space": args.augment_space, "training_mode": args.training_mode, "budget": 10**6}
        if args.feature_chunk_size:
            config["feature_chunk_size"] = args.feature_chunk_size
        users = []
        for name in ("bench_a", "bench_b", "bench_c"):
            u = get_user_model().objects.create_user(username=name, password=None)
            services.add_annotator(u)
            users.append(u)
        project = services.create_project(name="bench", classes=[str(c) for c in data.classes], config=config)
        membership.set_members(project=project, users=users)
        report = importers.import_arrays(project=project, images=images, labels=data.y_pool)
        if not report.ok:
            raise RuntimeError(report.summary())
        start = time.perf_counter()
        features.features_for(project)
        t_features = time.perf_counter() - start
        t_stage = None
        if args.training_mode == "finetune":  # the feature chunk tasks compute them in the app, once
            start = time.perf_counter()
            features.stage_inputs_for(project)
            t_stage = time.perf_counter() - start
        from labeling import workflow

        workflow.enqueue = lambda *a, **k: None  # this process runs the loop; workers only take chunk tasks
        reextract_log = []
        real_reextract = features.reextract

        def timed_reextract(project_, tuner, iteration, **kw):
            t = time.perf_counter()
            out = real_reextract(project_, tuner, iteration, **kw)
            reextract_log.append((time.perf_counter() - t, handler.last))
            return out

        class Last(logging.Handler):
            last = ""

            def emit(self, record):
                if "re-extracted" in record.getMessage():
                    Last.last = record.getMessage().split(": ", 1)[-1]
        handler = Last()
        logging.getLogger("labeling.features").addHandler(handler)
        logging.getLogger("labeling.features").setLevel(logging.INFO)
        features.reextract = timed_reextract
        for k in range(args.workers):
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "train", "--pool", "solo",
                 "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning",
                 "-n", f"bench-{os.getpid()}-{k}@%h"],
                cwd=ROOT, stdout=(tmp / f"worker-{k}.log").open("w"), stderr=subprocess.STDOUT))
        if workers:
            time.sleep(5)  # let them start before the first step
        services.start_project(project=project)
        print(f"{args.dataset} pool {len(images)} ({images.shape[1]}x{images.shape[2]}x{channels}), backbone {backbone} "
              f"({'weights ' + str(args.weights) if args.weights else 'random init'}), batch {args.batch}, "
              f"augment_space {args.augment_space}, training_mode {args.training_mode}, {args.threads} torch thread(s), "
              f"device {device.info().describe()}, feature_chunk_size {project.live_config.feature_chunk_size}, "
              f"{args.workers} chunk worker(s)")
        print(f"features of the pool: {t_features:.1f} s (once)")
        if t_stage is not None:
            print(f"last-stage inputs of the pool: {t_stage:.1f} s (once)")
        print(f"{'batch':>5} {'first call s':>12} {'batch s':>8} {'reextract s':>11} {'rows':>5} {'failed':>6} "
              f"{'min L2':>8}  outcome")

        def answer_all() -> None:
            progress = True
            while progress:
                progress = False
                for u in users:
                    asg = answering.next_assignment(user=u, project=project)
                    if asg is not None:
                        answering.submit_annotation(user=u, assignment_id=asg.pk, label=asg.item.ground_truth,
                                                    seconds=1)
                        progress = True

        for _ in range(args.batches):
            project.refresh_from_db()
            if project.state == Project.State.FINISHED:
                break
            batch = QueryBatch.objects.filter(project=project, closed_at__isnull=True).order_by("iteration").first()
            answer_all()
            reextract_log.clear()
            t0 = time.perf_counter()
            outcome = loop_step.advance_loop(batch_id=batch.pk)
            first = time.perf_counter() - t0
            while outcome.startswith("reannotation"):
                answer_all()
                outcome = loop_step.advance_loop(batch_id=batch.pk)
            total = time.perf_counter() - t0
            rows = live.load_artificial([features.artificial_path(project, batch.iteration)])
            m = IterationMetric.objects.filter(project=project, iteration=batch.iteration).first()
            min_l2 = "-" if m is None or m.min_perturbation is None else f"{m.min_perturbation:.3f}"
            rex = f"{sum(t for t, _ in reextract_log):.2f}" if reextract_log else "-"
            how = f" [{'; '.join(h for _, h in reextract_log if h)}]" if any(h for _, h in reextract_log) else ""
            print(f"{batch.iteration:>5} {first:>12.2f} {total:>8.2f} {rex:>11} {sum(len(r) for r in rows.values()):>5} "
                  f"{m.craft_failed if m else '-':>6} {min_l2:>8}  {outcome}{how}")
            Last.last = ""
    finally:
        for w in workers:
            w.terminate()
            try:
                w.wait(timeout=20)
            except subprocess.TimeoutExpired:
                w.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
