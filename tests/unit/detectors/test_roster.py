"""The role tracker and the detector roster: who is compared with whom, findings kept and
journaled on change, external findings that expire, and reconfiguration that keeps evidence."""

from __future__ import annotations

from tests.fakes import FakeClock, MemoryStateStore
from tfwarden.core.errors import StateError
from tfwarden.core.series import SeriesWindows
from tfwarden.core.status import ModelStatus, Phase
from tfwarden.core.types import Finding, Sample, VersionState
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.state import EventJournal
from tfwarden.detectors.errors import BurnRate, CanaryErrors
from tfwarden.detectors.latency import BaselineLatency, CanaryLatency, LatencySettings, LatencySLO
from tfwarden.detectors.memory import MemoryLeak
from tfwarden.detectors.roles import RoleTracker
from tfwarden.detectors.roster import DetectionSettings, ModelObjectives, Roster

AVAILABLE = [VersionState(1, "AVAILABLE"), VersionState(2, "AVAILABLE")]


class Recorded:
    def __init__(self) -> None:
        self.changes: list[tuple[str, tuple[int | None, int | None],
                                 tuple[int | None, int | None]]] = []

    def roles_changed(self, model: str, previous: tuple[int | None, int | None],
                      current: tuple[int | None, int | None]) -> None:
        self.changes.append((model, previous, current))


def test_roles_from_labels_then_versions_and_the_lifecycle_status_wins() -> None:
    roles, heard = RoleTracker(), Recorded()
    roles.subscribe(heard)
    roles.versions_seen("m", AVAILABLE, None)  # no labels: lower stable, higher canary
    assert roles.roles("m") == (1, 2)
    roles.versions_seen("m", AVAILABLE, {"stable": 2})
    assert roles.roles("m") == (2, None)
    roles.versions_seen("m", AVAILABLE, {"stable": 2})  # unchanged: nobody is told
    roles.status_changed(ModelStatus("m", Phase.CANARY_LIVE, stable_version=1, canary_version=2))
    roles.versions_seen("m", AVAILABLE, {"stable": 2})  # a stale poll cannot undo it
    assert roles.roles("m") == (1, 2)
    assert heard.changes == [("m", (None, None), (1, 2)), ("m", (1, 2), (2, None)),
                             ("m", (2, None), (1, 2))]


def test_roles_from_deploy_events() -> None:
    roles = RoleTracker()
    roles.deployed("m", 3, "canary")  # no stable yet: nothing to compare with
    assert roles.roles("m") == (None, None)
    roles.deployed("m", 1, "stable")
    roles.deployed("m", 2, "canary")
    assert roles.roles("m") == (1, 2)
    roles.deployed("m", 2, "stable")
    assert roles.roles("m") == (2, None)


def roster(settings: DetectionSettings | None = None, **objectives: ModelObjectives) -> Roster:
    clock, store = FakeClock(), MemoryStateStore()
    return Roster(settings or DetectionSettings(), objectives or {"m": ModelObjectives()},
                  {"serving-0": "pid 1"}, SeriesWindows(), clock, EventJournal(store, clock, Recorder()),
                  Recorder())


def test_comparisons_follow_the_roles() -> None:
    r = roster(m=ModelObjectives(latency_p99_ms=50))
    r.roles_changed("m", (None, None), (1, 2))
    assert isinstance(r.detectors[("latency", "m", "canary")], CanaryLatency)
    assert isinstance(r.detectors[("errors", "m", "canary")], CanaryErrors)
    assert isinstance(r.detectors[("latency", "m", "slo")], LatencySLO)
    assert isinstance(r.detectors[("memory", "serving-0", None)], MemoryLeak)
    for i in range(300):  # v1's samples become the baseline of the next stable version
        sample = Sample(r.clock.now() - 300 + i, "predict", "latency_ms", 10.0, model="m",
                        version=1)
        r.windows.add(sample)
        r.observe(sample)
    assert isinstance(r.detectors[("burn", "m", 1)], BurnRate)
    r.roles_changed("m", (1, 2), (2, None))
    assert ("latency", "m", "canary") not in r.detectors
    baseline = r.detectors[("latency", "m", "baseline")]
    assert isinstance(baseline, BaselineLatency) and len(baseline.baseline) == 300


def test_findings_are_journaled_when_their_verdict_changes_and_external_ones_expire() -> None:
    r = roster()
    key = ("drift", "m", "inputs")
    assert r.publish(key, Finding("drift", "inconclusive", 1.0, model="m", target="inputs"))
    assert not r.publish(key, Finding("drift", "inconclusive", 2.0, model="m", target="inputs"))
    assert r.publish(key, Finding("drift", "regression", 3.0, model="m", target="inputs"))
    journal = r.journal.store.entries()  # type: ignore[union-attr]
    assert [e.payload["verdict"] for e in journal] == ["inconclusive", "regression"]
    page = Finding("burn", "regression", 3.0, model="m", target="alertmanager:Burn")
    r.add_external(page, expires_at=r.clock.now() + 60, identity="alertname=Burn")
    assert page in r.findings()
    r.clock.advance(61)
    assert page not in r.findings()


def test_a_state_store_that_is_away_does_not_stop_the_judging() -> None:
    class Away:
        def record(self, event: object) -> int:
            raise StateError("postgresql://db:5432/tfwarden: unreachable")

    r = roster()
    r.journal = Away()
    key = ("drift", "m", "inputs")
    assert r.publish(key, Finding("drift", "regression", 1.0, model="m", target="inputs"))
    assert [f.verdict for f in r.findings()] == ["regression"]  # kept, the policy sees it


def test_reconfigure_keeps_evidence_unless_the_settings_changed() -> None:
    r = roster(m=ModelObjectives(), n=ModelObjectives())
    r.roles_changed("m", (None, None), (1, 2))
    r.roles_changed("n", (None, None), (5, 6))
    canary_m, canary_n = r.detectors[("latency", "m", "canary")], r.detectors[("latency", "n", "canary")]
    r.publish(("drift", "n", "inputs"), Finding("drift", "ok", 0.0, model="n", target="inputs"))
    r.reconfigure(DetectionSettings(), {"m": ModelObjectives(), "n": ModelObjectives()},
                  {"serving-0": "pid 1"}, drift_models=["n"])
    assert r.detectors[("latency", "m", "canary")] is canary_m  # same settings: same evidence
    assert r.detectors[("latency", "n", "canary")] is canary_n
    assert ("drift", "n", "inputs") in r.latest
    r.reconfigure(DetectionSettings(latency=LatencySettings(effect_floor=0.2)),
                  {"m": ModelObjectives()}, {}, drift_models=[])
    rebuilt = r.detectors[("latency", "m", "canary")]
    assert rebuilt is not canary_m and isinstance(rebuilt, CanaryLatency)
    assert rebuilt.settings.effect_floor == 0.2
    assert not [k for k in r.detectors if k[1] in ("n", "serving-0")]  # gone with the config
    assert ("drift", "n", "inputs") not in r.latest


def test_a_memory_target_pointed_elsewhere_starts_a_new_leak_detector() -> None:
    r = roster()
    leak = r.detectors[("memory", "serving-0", None)]
    r.reconfigure(DetectionSettings(), {"m": ModelObjectives()}, {"serving-0": "pid 1"}, [])
    assert r.detectors[("memory", "serving-0", None)] is leak
    r.reconfigure(DetectionSettings(), {"m": ModelObjectives()}, {"serving-0": "pid 2"}, [])
    assert r.detectors[("memory", "serving-0", None)] is not leak


def test_a_model_no_longer_managed_follows_the_server_again() -> None:
    roles, heard = RoleTracker(), Recorded()
    roles.subscribe(heard)
    roles.status_changed(ModelStatus("m", stable_version=1))
    roles.versions_seen("m", AVAILABLE, {"stable": 2})
    assert roles.roles("m") == (1, None)
    roles.forget("m")  # a reload took the model out of the lifecycle
    roles.versions_seen("m", AVAILABLE, {"stable": 2})
    assert roles.roles("m") == (2, None) and heard.changes[-1] == ("m", (None, None), (2, None))


def test_a_model_that_loses_its_drift_checks_loses_its_performance_findings_too() -> None:
    r = roster()
    r.reconfigure(DetectionSettings(), {"m": ModelObjectives()}, {"serving-0": "pid 1"}, ["m"])
    key = ("performance", "m", "accuracy:canary")
    r.publish(key, Finding("performance", "regression", 1.0, model="m", version=2,
                           target="accuracy"))
    r.reconfigure(DetectionSettings(), {"m": ModelObjectives()}, {"serving-0": "pid 1"}, ["m"])
    assert key in r.latest  # still checked: kept
    r.reconfigure(DetectionSettings(), {"m": ModelObjectives()}, {"serving-0": "pid 1"}, [])
    assert key not in r.latest  # no detector stands behind it any more


def test_a_dropped_comparison_takes_its_metrics_with_it() -> None:
    """After a rollback the canary's comparison is gone: its tfwarden_finding series must go
    too, or the TfwardenCanaryFailed alert keeps firing on a verdict nobody holds any more."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    clock, store = FakeClock(), MemoryStateStore()
    r = Roster(DetectionSettings(), {"m": ModelObjectives()}, {}, SeriesWindows(), clock,
               EventJournal(store, clock, Recorder()), Recorder(registry))
    r.roles_changed("m", (None, None), (1, 2))
    r.publish(("latency", "m", "canary"), Finding(
        "latency", "regression", clock.now(), model="m", version=2, target="v1",
        effect={"median_ratio": 3.0},
        evidence={"statistic": "log_e_value", "value": 20.0, "threshold": 16.1, "samples": 60}))

    def series() -> str:
        return "\n".join(line for line in generate_latest(registry).decode().splitlines()
                         if line.startswith("tfwarden_") and 'version="2"' in line)

    assert 'tfwarden_finding{detector="latency"' in series()
    r.roles_changed("m", (1, 2), (1, None))  # rolled back
    assert series() == ""



def test_the_burn_rate_of_a_version_without_a_role_goes() -> None:
    r = roster()
    r.roles_changed("m", (None, None), (1, 2))
    for version in (1, 2):
        r.observe(Sample(r.clock.now(), "predict", "latency_ms", 10.0, model="m",
                         version=version, ok=version == 1))
    assert {("burn", "m", 1), ("burn", "m", 2)} <= set(r.detectors)
    r.roles_changed("m", (1, 2), (1, None))  # v2 rolled back
    assert ("burn", "m", 2) not in r.detectors and ("burn", "m", 1) in r.detectors


def test_every_versions_burn_finding_is_exported_at_once() -> None:
    r = roster()
    assert isinstance(r.metrics, Recorder)
    r.roles_changed("m", (None, None), (1, 2))
    for i in range(100):
        for version in (1, 2):
            r.observe(Sample(r.clock.now() - 100 + i, "predict", "latency_ms", 10.0, model="m",
                             version=version))
    for _ in range(3):  # each evaluation used to drop the other version's series
        r.evaluate(r.clock.now())
    exported = {s.labels["version"] for family in r.metrics.registry.collect()
                if family.name == "tfwarden_finding" for s in family.samples
                if s.labels["detector"] == "burn" and s.value == 1}
    assert exported == {"1", "2"}
    r.roles_changed("m", (1, 2), (1, None))  # version 2 lost its role: its burn series go
    exported = {s.labels["version"] for family in r.metrics.registry.collect()
                if family.name == "tfwarden_finding" for s in family.samples
                if s.labels["detector"] == "burn"}
    assert exported == {"1"}
