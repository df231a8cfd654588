"""Time from a regressing cohort's first reports to its rollback, in a staged edge rollout.

Starts a daemon with one edge model (rollout steps 5/25/100, default verdict settings but
``min_devices``) and a fleet of ``--per-cohort`` simulated devices in each of 4 cohorts
(``tfwarden.daemon.fleet``: OpenTelemetry SDK exporters, a LiteRT interpreter), all on version
1. Version 2 is published; on it one cohort is ``--slowdown`` times slower. Rounds run back to
back (every device reports once a round, as an app reports once a minute). Prints one JSON line
per seed: the rounds the slow cohort's candidate devices reported before the pin (= minutes at
one report a minute), the wall seconds from the start of their first round on version 2 to the
pin (back-to-back rounds on this machine), the device pairs and the e-value the finding had, and
whether any other cohort was pinned (a false pin).

    python bench/edge_rollout.py [--per-cohort 1000] [--seeds 1,2,3] [--slowdown 2.0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tfwarden.daemon.fleet import Fleet, Profile, Profiles, publish_version

SLOW = "ml.delegate=gpu | device.model.identifier=galaxy-s23"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(work: Path, per_cohort: int, seed: int, slowdown: float, max_rounds: int) -> dict[str, Any]:
    publish_version(work / "digits", 1)
    port = free_port()
    config = {"server": {"listen": f"127.0.0.1:{port}"}, "state_dir": str(work / "state"),
              "edge": {"client_points_per_second": 10_000_000, "models": [{
                  "name": "digits", "base_path": str(work / "digits"),
                  "rollout": {"steps": [5, 25, 100], "min_step_seconds": 3600,
                              "assignment_ttl_seconds": 0.5}}]}}
    (work / "tfwarden.yaml").write_text(yaml.safe_dump(config))
    log = open(work / "daemon.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen([sys.executable, "-m", "tfwarden.daemon", "run", "--config",
                               str(work / "tfwarden.yaml")], stderr=log, stdout=log)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    profiles = Profiles(Profile(latency_ms=8),
                        {(2, SLOW): Profile(latency_ms=8, multiplier=slowdown)})
    fleet = Fleet.for_daemon(f"http://127.0.0.1:{port}", "digits", Fleet.grid(per_cohort),
                             seed=seed, profile=profiles)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/api/v1/edge/digits/rollout").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "daemon not ready"
            time.sleep(0.1)
        fleet.report_round()
        publish_version(work / "digits", 2)
        time.sleep(2.5)  # the rollout starts at the next policy tick
        rounds, first = 0, None
        while rounds < max_rounds:
            started = time.time()
            time.sleep(0.5)  # assignments expire
            fleet.report_round()
            if any(d.version == 2 and d.cohort == SLOW for d in fleet.devices):
                rounds += 1
                first = first or started
            rollout = client.get("/api/v1/edge/digits/rollout").json()
            if rollout["pinned"]:
                break
        time.sleep(2.5)  # a pin decided after the last round
        done = client.get("/api/v1/journal", params={"kind": "edge_action_done",
                                                     "limit": 100}).json()["entries"]
        pins = [e for e in done if e["payload"]["action"] == "rollback_cohort"]
        candidates = sum(d.version == 2 for d in fleet.devices if d.cohort == SLOW)
        if not pins or first is None:
            return {"seed": seed, "pinned": False, "rounds": rounds}
        pin = pins[0]
        finding = pin["payload"]["findings"][0]
        return {"seed": seed, "per_cohort": per_cohort, "slowdown": slowdown,
                "slow_cohort_candidate_devices": candidates,
                "rounds_to_pin": rounds, "minutes_at_one_report_a_minute": rounds,
                "seconds_to_pin_back_to_back": round(pin["t"] - first, 1),
                "pinned": pin["payload"]["params"]["cohort"],
                "false_pins": [p["payload"]["params"]["cohort"] for p in pins[1:]],
                "pairs": finding["evidence"]["pairs"],
                "log_e_value": finding["evidence"]["log_e_value"],
                "log_threshold": finding["evidence"]["log_threshold"],
                "median_ratio": finding["effect"]["median_ratio"],
                "round_seconds": round(fleet.rounds[-1].seconds, 2)}
    finally:
        fleet.close()
        client.close()
        daemon.terminate()
        daemon.wait(timeout=15)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-cohort", type=int, default=1000)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--slowdown", type=float, default=2.0)
    parser.add_argument("--max-rounds", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps({"machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "python": platform.python_version()}))
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="tfwarden-bench-edge-") as work:
            print(json.dumps(run(Path(work), args.per_cohort, seed, args.slowdown,
                                 args.max_rounds)), flush=True)


if __name__ == "__main__":
    main()
