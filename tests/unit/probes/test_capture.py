"""The capture reservoirs stay bounded and sample uniformly."""

from __future__ import annotations

from tfwarden.probes.capture import Reservoir


def test_reservoir_is_bounded_and_uniform() -> None:
    reservoir = Reservoir(capacity=1000, seed=1)
    for start in range(0, 100_000, 1000):
        reservoir.add([[float(i)] for i in range(start, start + 1000)])
    assert len(reservoir.rows) == 1000 and reservoir.seen == 100_000
    mean = sum(float(r[0]) for r in reservoir.rows) / 1000
    assert abs(mean - 50_000) < 3 * 28_868 / 1000 ** 0.5  # uniform over everything seen
