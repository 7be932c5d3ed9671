"""``manage.py pretrain_backbone``: train a clean feature extractor on a labeled source set.

Default = the reproduction's extractor: CIFAR ResNet-20, 10 epochs of one-cycle SGD with crops and
flips on the eight CIFAR-10 classes other than airplane and frog (the shared JPEG tarball). Weights
and ``meta.json`` go to ``$ROBUSTAL_CACHE_DIR/backbones/<name>/``; a re-run resumes from the last
finished epoch. With internet access ``--backbone resnet50 --weights imagenet`` in ``simulate``
stays the alternative.
"""
from __future__ import annotations

import json

import torch
from django.core.management.base import BaseCommand, CommandError

from learner.pretrain import CIFAR2_SOURCE_CLASSES, pretrain_backbone


class Command(BaseCommand):
    help = "Pretrain a CIFAR-style backbone on a labeled source set (resumable, seeded)."

    def add_arguments(self, parser):
        parser.add_argument("--source", default="cifar10",
                            help="cifar10 (shared JPEG tarball) | a .tar.gz, image folder or .npz")
        parser.add_argument("--classes", default=",".join(CIFAR2_SOURCE_CLASSES),
                            help="comma-separated source classes ('all' for every class)")
        parser.add_argument("--arch", default="resnet20", help="resnet20 | smallcnn")
        parser.add_argument("--epochs", type=int, default=10)
        parser.add_argument("--batch-size", type=int, default=128)
        parser.add_argument("--lr", type=float, default=0.1, help="one-cycle peak learning rate")
        parser.add_argument("--weight-decay", type=float, default=5e-4)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--name", default="cifar8-resnet20",
                            help="folder under $ROBUSTAL_CACHE_DIR/backbones")
        parser.add_argument("--train-size", type=int, default=None, help="seeded sub-sample (smoke tests)")
        parser.add_argument("--test-size", type=int, default=None)
        parser.add_argument("--no-augment", action="store_true")
        parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **o):
        if o["threads"]:
            torch.set_num_threads(o["threads"])
        classes = None if o["classes"].strip() in ("", "all") else [
            c.strip() for c in o["classes"].split(",") if c.strip()
        ]
        try:
            res = pretrain_backbone(
                o["source"], classes, arch=o["arch"], epochs=o["epochs"], batch_size=o["batch_size"],
                lr=o["lr"], weight_decay=o["weight_decay"], seed=o["seed"], name=o["name"] or None,
                train_size=o["train_size"], test_size=o["test_size"], augment=not o["no_augment"],
                resume=not o["restart"], progress=not o["no_progress"],
                log=lambda s: (self.stdout.write(s), self.stdout.flush()),
            )
        except (ValueError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        m = res.meta
        self.stdout.write(self.style.SUCCESS(
            f"{m['arch']} on {len(m['source_classes'])} classes, {m['epochs']} epochs: source test "
            f"accuracy {m['source_test_accuracy']:.4f}, {m['train_time_s']:.0f} s of training"
        ))
        self.stdout.write(f"weights: {res.weights_path}")
        self.stdout.write(f"metadata: {res.meta_path}")
        self.stdout.write(json.dumps({k: m[k] for k in ("data_fingerprint", "weights_digest", "weights_sha256")}))
