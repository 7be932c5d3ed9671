"""Eleven simulated labelers through the web models, one mapping digit 1 -> 7: the loop's own
rules must flag the malicious one within a few batches; the honest false-flag rate is measured
and printed (``pytest -s`` shows it; ``bench/bench_trust_simulation.py`` runs more seeds)."""
from __future__ import annotations

import pytest

from labeling.models import LabelerProfile
from tests.web.labeling_support import labeling_dirs  # noqa: F401
from trust import simulation
from trust.models import ConfusionEstimate, TrustEvent

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_the_malicious_labeler_is_flagged_within_a_few_batches(labeling_dirs):
    result = simulation.run(seed=0, max_batches=4)
    print(f"\ntrust simulation seed 0: malicious flagged after {result.malicious_flagged_after} batch(es); "
          f"honest flagged {result.honest_flagged}/{len(result.honest_ids)} "
          f"(false-flag rate {result.honest_false_flag_rate:.2f}); {result.labels_bought} labels; "
          f"{result.seconds:.1f} s; reasons {result.reasons}")
    assert result.batches >= 2
    (bad,) = result.malicious_ids
    assert result.malicious_flagged_after is not None and result.malicious_flagged_after <= 3
    profile = LabelerProfile.objects.get(user_id=bad)
    assert profile.is_flagged or profile.is_suspended
    # the flag is explained in the history, and its open work went to others
    assert TrustEvent.objects.filter(labeler_id=bad, reason__in=["flagged", "suspended"]).exists()
    assert set(result.reasons[bad]) & {"alert", "systematic_confusion", "suspended"}
    assert not profile.user.labeling_assignments.filter(status="open").exists()
    # Dawid-Skene sees the 1 -> 7 mapping (classes 1, 4, 7: indices 0 -> 2)
    assert result.suggestions[bad] == "suspend"
    est = ConfusionEstimate.objects.get(labeler_id=bad)
    assert est.matrix[0][2] > 0.5 and [0, 2] in est.suspicious_pairs
    # the rate is measured, not assumed: every honest labeler counted as flagged really is blocked
    for uid in result.honest_ids:
        p = LabelerProfile.objects.get(user_id=uid)
        assert (uid in result.flagged_at) == (p.is_flagged or p.is_suspended)
        assert [0, 2] not in ConfusionEstimate.objects.get(labeler_id=uid).suspicious_pairs
