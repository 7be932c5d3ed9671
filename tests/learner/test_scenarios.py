"""The threat suite's crowds and the strategy names of simulate / reproduce_paper."""
from __future__ import annotations

import numpy as np
import pytest

from learner.experiments import ExperimentSpec, labeler_pool, split_strategy

CLASSES = ("0", "1", "7")


@pytest.mark.parametrize("scenario,adversaries,kind", [
    ("benign", 0, None), ("malicious", 1, "malicious"), ("collusion", 3, "malicious"),
    ("sleeper", 2, "sleeper"), ("spammer", 2, "spammer"),
])
def test_each_scenario_brings_its_adversaries(scenario, adversaries, kind):
    pool = labeler_pool(ExperimentSpec(scenario=scenario, dataset="digits"), CLASSES)
    bad = [lab for lab in pool.labelers if lab.malicious]
    assert len(pool.labelers) == 11 and len(bad) == adversaries
    for lab in bad:
        assert (lab.spammer, lab.honest_first > 0, bool(lab.mapping)) == {
            "spammer": (True, False, False), "sleeper": (False, True, True), "malicious": (False, False, True)}[kind]
        if lab.mapping:
            assert lab.mapping == {1: 2}  # 1 -> 7 in these classes


def test_strategy_suffixes():
    assert split_strategy("margin") == ("margin", None, None)
    assert split_strategy("margin+defended") == ("margin", None, True)
    assert split_strategy("robust+density") == ("robust", "density", None)
    assert split_strategy("margin+defended+density") == ("margin", "density", True)
    with pytest.raises(ValueError, match="unknown suffix"):
        split_strategy("margin+magic")
    with pytest.raises(ValueError, match="unknown strategy"):
        split_strategy("guess")


def test_default_mapping_sends_the_first_class_to_the_second():
    from learner.experiments import default_mapping

    assert default_mapping(("airplane", "frog")) == {"airplane": "frog"}  # the paper's, from the class order
    assert default_mapping(("deer", "truck")) == {"deer": "truck"}
    assert default_mapping(("truck", "deer")) == {"truck": "deer"}
    assert default_mapping(("0", "1", "7")) == {"1": "7"}  # digits keep 1 -> 7
    assert default_mapping(("cat",)) == {}
    pool = labeler_pool(ExperimentSpec(scenario="malicious", dataset="cifar10"), ("deer", "truck"))
    bad = [lab for lab in pool.labelers if lab.malicious]
    assert len(bad) == 1 and bad[0].mapping == {0: 1}
    assert bad[0].label(0, 2, np.random.default_rng(0)) == 1  # every deer comes back as truck
    with pytest.raises(ValueError, match="no malicious mapping"):
        labeler_pool(ExperimentSpec(scenario="malicious", dataset="cifar10"), ("cat",))
