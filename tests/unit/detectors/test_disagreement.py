from __future__ import annotations

from tfwarden.detectors.disagreement import Disagreement, DisagreementSettings, disagrees

SETTINGS = DisagreementSettings(disagreement_threshold=0.05, min_rows=100)


def test_row_rules() -> None:
    assert not disagrees([2.0], [2.0005], SETTINGS)
    assert disagrees([2.0], [2.1], SETTINGS)
    assert not disagrees([0.1, 0.7, 0.2], [0.2, 0.5, 0.3], SETTINGS)  # same top class
    assert disagrees([0.1, 0.7, 0.2], [0.6, 0.3, 0.1], SETTINGS)
    assert disagrees(["cat"], ["dog"], SETTINGS) and not disagrees(["cat"], ["cat"], SETTINGS)


def test_verdicts_follow_the_wilson_interval() -> None:
    detector = Disagreement("m", 1, 2, SETTINGS)
    detector.add([[1.0]] * 50, [[1.0]] * 50)
    assert detector.evaluate(0).verdict == "inconclusive"
    detector.add([[1.0]] * 950, [[1.0]] * 950)
    assert detector.evaluate(0).verdict == "ok"
    bad = Disagreement("m", 1, 2, SETTINGS)
    bad.add([[1.0]] * 300, [[1.0]] * 240 + [[3.0]] * 60)
    finding = bad.evaluate(0)
    assert finding.verdict == "regression" and finding.version == 2
    assert finding.target == "disagreement" and finding.effect["disagreement"] == 0.2
    edge = Disagreement("m", 1, 2, SETTINGS)
    edge.add([[1.0]] * 200, [[1.0]] * 190 + [[3.0]] * 10)
    assert edge.evaluate(0).verdict == "inconclusive"  # 5 % with a CI around the threshold
