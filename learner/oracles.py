"""Simulated labelers: honest with error rate ``pr``, and malicious with a class mapping.

A benign labeler returns the true class with probability ``1 - pr`` and otherwise a class drawn
uniformly from the others. A malicious labeler maps every item of class ``ct`` to ``ct'`` and is
honest (up to ``pr``) elsewhere. Assignment: each item to one active labeler drawn at random;
re-annotations go to ``h`` distinct active labelers, never the original one.
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

    @property
    def malicious(self) -> bool:
        return bool(self.mapping)

    def label(self, true_label: int, n_classes: int, rng: np.random.Generator) -> int:
        """The label this labeler gives an item of class ``true_label``."""
        true_label = int(true_label)
        if true_label in self.mapping:
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
              n_malicious: int = 0, mapping: dict[int, int] | None = None) -> "LabelerPool":
        """``n_labelers`` labelers of which the last ``n_malicious`` apply ``mapping``."""
        if n_malicious > n_labelers:
            raise ValueError("more malicious labelers than labelers")
        if n_malicious and not mapping:
            raise ValueError("malicious labelers need a class mapping")
        labelers = [
            Labeler(i, error_rate, dict(mapping) if i >= n_labelers - n_malicious else {})
            for i in range(n_labelers)
        ]
        return cls(labelers, n_classes)

    @property
    def ids(self) -> list[int]:
        return [lab.ident for lab in self.labelers]

    def annotate(self, labeler_id: int, true_label: int, rng: np.random.Generator) -> int:
        return self.labelers[labeler_id].label(true_label, self.n_classes, rng)

    def assign(self, n_items: int, active: list[int], rng: np.random.Generator) -> np.ndarray:
        """One active labeler per item, drawn uniformly."""
        if not active:
            raise RuntimeError("no active labeler left to assign work to")
        return np.asarray(active)[rng.integers(len(active), size=n_items)]

    def assign_reannotation(self, original: int, h: int, active: list[int],
                            rng: np.random.Generator) -> list[int]:
        """``h`` distinct active labelers other than ``original`` (fewer if not enough exist)."""
        others = [a for a in active if a != original]
        k = min(h, len(others))
        return [int(x) for x in rng.choice(others, size=k, replace=False)] if k else []
