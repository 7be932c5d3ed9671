"""Crowd aggregation for the redundancy baselines, through crowd-kit (a maintained library).

What practitioners do against an unreliable crowd without our defences: ask ``k`` labelers per
item and aggregate, by majority vote (Label Studio's overlap) or by Dawid-Skene. The engine
(:mod:`learner.engine`, ``LiveConfig.redundancy`` / ``aggregation``) calls :func:`aggregate` on the
answers it has bought; this module only adapts arrays to crowd-kit's data frames and back, so the
baseline is crowd-kit's, not ours. (Our own Dawid-Skene in :mod:`learner.confusion` serves the
trust rules, where we need the confusion matrices and the model as an extra labeler.)
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

METHODS = ("majority", "dawid_skene")


def aggregate(answers: Iterable[tuple[int, int, int]], method: str, *, items: Iterable[int] | None = None,
              n_iter: int = 100) -> dict[int, int]:
    """Aggregated label per item from ``(item, labeler, label)`` answers.

    Parameters
    ----------
    answers : every answer to consider; Dawid-Skene estimates each labeler's confusion from all of
        them, so pass every answer bought so far, not only the items to resolve.
    method : "majority" (crowd-kit ``MajorityVote``: ties go to the smallest label, deterministic)
        or "dawid_skene" (crowd-kit ``DawidSkene``, ``n_iter`` EM iterations).
    items : the items wanted (default: every item answered).

    Returns
    -------
    {item: label}
    """
    import pandas as pd
    from crowdkit.aggregation import DawidSkene, MajorityVote

    if method not in METHODS:
        raise ValueError(f"aggregation must be one of {METHODS}, got {method!r}")
    rows = [(int(i), int(w), int(y)) for i, w, y in answers]
    if not rows:
        return {}
    frame = pd.DataFrame(rows, columns=["task", "worker", "label"])
    with warnings.catch_warnings():  # crowd-kit 1.4.2 uses pandas APIs that pandas 3 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if method == "majority":
            result = MajorityVote().fit_predict(frame)
        else:
            result = DawidSkene(n_iter=n_iter).fit_predict(frame)
    out = {int(task): int(label) for task, label in result.items()}
    if items is None:
        return out
    return {int(i): out[int(i)] for i in items if int(i) in out}


__all__ = ["aggregate", "METHODS"]
