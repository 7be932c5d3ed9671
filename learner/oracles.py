"""Simulated labelers: honest, malicious (a class mapping), sleepers and spammers.

Who labels what is the loop engine's decision (:mod:`learner.engine`), the same in the simulator
and the web app; this module only answers.

A benign labeler returns the true class with probability ``1 - pr`` and otherwise a class drawn
uniformly from the others. A malicious labeler maps every item of class ``ct`` to ``ct'`` and is
honest (up to ``pr``) elsewhere. A *sleeper* (``honest_first=n``) answers honestly for its first
``n`` first labels and on every re-annotation, then applies its mapping to first labels. A
*spammer* answers uniformly at random.

Every answer is a deterministic function of (run seed, labeler, item, how many times this
labeler answered this item), so two drivers that ask the same questions in a different order
(the simulator and the web app's services) get the same answers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Labeler:
    """One simulated labeler."""

    ident: int
    error_rate: float = 0.05
    mapping: dict[int, int] = field(default_factory=dict)  # {true class: returned class}
    honest_first: int = 0  # a sleeper: honest for this many first labels (and on re-annotations)
    spammer: bool = False  # answers uniformly at random

    @property
    def malicious(self) -> bool:
        return bool(self.mapping) or self.spammer

    def attacks(self, true_label: int, *, first_label: bool = True, given_before: int = 0) -> bool:
        """Whether this answer is an attack: a spammer's every answer, a mapping labeler's answer
        on a mapped class (a sleeper's only after its honest first labels, and never on a
        re-annotation)."""
        if self.spammer:
            return True
        if not self.mapping or int(true_label) not in self.mapping:
            return False
        return not self.honest_first or (first_label and given_before >= self.honest_first)

    def label(self, true_label: int, n_classes: int, rng: np.random.Generator, *, first_label: bool = True,
              given_before: int = 0) -> int:
        """The label this labeler gives an item of class ``true_label``.

        ``first_label``: a first label (not a re-annotation or a secured-set vote);
        ``given_before``: first labels this labeler gave before this one (sleepers count them).
        """
        true_label = int(true_label)
        if self.spammer:
            return int(rng.integers(n_classes))
        if self.attacks(true_label, first_label=first_label, given_before=given_before):
            return int(self.mapping[true_label])
        if n_classes > 1 and rng.random() < self.error_rate:
            other = int(rng.integers(n_classes - 1))
            return other if other < true_label else other + 1
        return true_label


@dataclass
class LabelerPool:
    """A crowd of simulated labelers and the assignment policy.

    Parameters
    ----------
    labelers : list of Labeler
    n_classes : number of classes
    """

    labelers: list[Labeler]
    n_classes: int

    @classmethod
    def build(cls, n_classes: int, *, n_labelers: int = 11, error_rate: float = 0.05,
              n_malicious: int = 0, mapping: dict[int, int] | None = None, kind: str = "malicious",
              honest_first: int = 30) -> "LabelerPool":
        """``n_labelers`` labelers of which the last ``n_malicious`` are adversaries.

        ``kind``: "malicious" (apply ``mapping`` always), "sleeper" (honest for its first
        ``honest_first`` first labels and on re-annotations, then ``mapping``) or "spammer"
        (uniformly random answers; no mapping needed).
        """
        if n_malicious > n_labelers:
            raise ValueError("more malicious labelers than labelers")
        if kind not in ("malicious", "sleeper", "spammer"):
            raise ValueError(f"unknown adversary kind {kind!r}")
        if n_malicious and not mapping and kind != "spammer":
            raise ValueError("malicious labelers need a class mapping")

        def adversary(i: int) -> Labeler:
            if kind == "spammer":
                return Labeler(i, error_rate, spammer=True)
            return Labeler(i, error_rate, dict(mapping), honest_first=honest_first if kind == "sleeper" else 0)

        labelers = [adversary(i) if i >= n_labelers - n_malicious else Labeler(i, error_rate)
                    for i in range(n_labelers)]
        return cls(labelers, n_classes)

    @property
    def ids(self) -> list[int]:
        return [lab.ident for lab in self.labelers]

    def answer(self, labeler_id: int, item: int, true_label: int, *, seed: int, nth: int = 0,
               first_label: bool = True, given_before: int = 0) -> int:
        """The answer of ``labeler_id`` to ``item``, the same whatever order questions come in.

        ``nth``: how many times this labeler answered this item before (a re-queued item).
        """
        rng = np.random.default_rng([int(seed), int(labeler_id), int(item), int(nth), 0x5EED])
        return self.labelers[labeler_id].label(true_label, self.n_classes, rng, first_label=first_label,
                                               given_before=given_before)
