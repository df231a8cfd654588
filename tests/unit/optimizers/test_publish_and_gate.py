from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tfwarden.optimizers.gate import Tolerances, judge, latency_reasons
from tfwarden.optimizers.publish import PROVENANCE, optimized_from, publish, versions, work_dir

FILES = [f"variables/part-{i}" for i in range(30)] + ["saved_model.pb"]


def build(base: Path) -> Path:
    candidate = work_dir(base)
    for name in FILES:
        (candidate / name).parent.mkdir(parents=True, exist_ok=True)
        (candidate / name).write_bytes(b"x" * 4096)
    return candidate


def test_a_concurrent_poller_never_sees_a_partial_version(tmp_path: Path) -> None:
    base = tmp_path / "m"
    base.mkdir()
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def poll() -> None:  # what TF Serving's file-system poller does: list numeric directories
        while not stop.is_set():
            for version in versions(base):
                directory = base / str(version)
                seen.append((version, sum(1 for p in directory.rglob("*") if p.is_file())))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        published = [publish(build(base), base, {"method": "test", "source_version": 1})
                     for _ in range(20)]
    finally:
        stop.set()
        poller.join()
    assert published == list(range(1, 21))
    assert seen and {count for _, count in seen} == {len(FILES) + 1}  # always complete
    assert not list(base.glob(".tfwarden-*"))
    provenance = json.loads((base / "3" / PROVENANCE).read_text())
    assert set(provenance["sha256"]) == set(FILES)
    assert optimized_from(base, 1, "test") == 1 and optimized_from(base, 2, "test") is None


def test_gate_reasons() -> None:
    ok = {"top1_agreement": 0.99, "max_abs_error": 0.2, "mean_abs_error": 0.01,
          "source_accuracy": 0.98, "candidate_accuracy": 0.975}
    assert judge(ok, Tolerances()) == []
    bad = {**ok, "top1_agreement": 0.5, "candidate_accuracy": 0.5}
    assert judge(bad, Tolerances()) == [
        "top-1 agreement 0.500 < 0.97",
        "accuracy 50.0 % is 48.0 points below the source's 98.0 % (max 1.0)"]
    regression = {"max_abs_error": 0.2, "mean_abs_error": 0.1, "source_mae": 0.1,
                  "candidate_mae": 0.3}
    assert judge(regression, Tolerances()) == [
        "MAE 0.3000 is 0.2000 above the source's (max 0.05)", "max abs output error 0.2 > 0.05"]
    assert latency_reasons({"p50_ms": 1.0}, {"p50_ms": 3.0}, Tolerances(max_latency_ratio=2)) \
        == ["p50 latency 3.00x the source's (max 2x)"]
    assert latency_reasons({"p50_ms": 1.0}, {"p50_ms": 3.0}, Tolerances()) == []


def test_publish_never_replaces_a_version_directory_that_appeared_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tfwarden.optimizers.publish as publishing

    base = tmp_path / "m"
    (base / "1").mkdir(parents=True)
    (base / "2").mkdir()  # made by someone else after we listed the versions: still empty
    listed = iter([[1], [1, 2]])
    monkeypatch.setattr(publishing, "versions", lambda _: next(listed))
    version = publish(build(base), base, {"method": "test", "source_version": 1})
    assert version == 3 and not any((base / "2").iterdir())
    assert (base / "3" / "saved_model.pb").is_file()
