"""How long a unit goes without an owner when its replica dies or stops, by lease length.

Starts a throwaway PostgreSQL (tests/postgres.py: a temporary cluster on a free port of
127.0.0.1), a devserver serving half_plus_two and three `tfwarden run` replicas on it
(`state.kind: postgres`, the model probed at 5 requests/s on its stable label). For each lease
length and each trial, the owner of the unit ``serving/dev`` is either killed (kill -9: its
lease must expire) or stopped (SIGTERM: it gives the lease back), and the clock runs until:

- re-owned: another replica holds the unit (the ``leases`` table, polled every 20 ms);
- probing: the new owner's first probe request of the model (its
  ``tfwarden_probe_requests_total``), i.e. the gap in monitoring.

The killed or stopped replica is started again before the next trial, which begins at a random
point of the replicas' rounds. Expected for kill -9:
between about 2/3 and 4/3 of the lease (the lease was renewed up to a third of it before the
kill; the others look every third of it); for SIGTERM: up to a third of the lease.

    python bench/failover.py [--leases 3,15] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import DaemonProcess, DevServer, free_port  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

MODEL = ROOT / "tests" / "testdata" / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
UNIT = "serving/dev"


class Group:
    def __init__(self, work: Path, dsn: str, dev: DevServer, lease: float) -> None:
        self.work, self.dsn, self.dev, self.lease = work, dsn, dev, lease
        self.daemons: dict[str, DaemonProcess] = {}

    def start(self, name: str) -> None:
        directory = self.work / f"lease{self.lease:g}" / name
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = {
            "server": {"listen": f"127.0.0.1:{port}"}, "state_dir": "./state",
            "state": {"kind": "postgres", "dsn_file": str(self.work / "pg.dsn"),
                      "lease_seconds": self.lease, "replica_name": name},
            "serving": {"dev": {"kind": "tfserving", "grpc_address": self.dev.grpc_address,
                                "rest_url": self.dev.rest_url,
                                "model_config_file": str(self.work / "models.config")}},
            "models": [{"name": "m", "serving": "dev",
                        "probe": {"address": "labels", "labels": ["stable"],
                                  "rate_per_second": 5}}]}
        path = directory / "tfwarden.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.daemons[name] = DaemonProcess(path, port)
        self.daemons[name].wait_ready(60)

    def owner(self) -> str | None:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT owner FROM leases WHERE unit = %s AND expires_at > "
                               "EXTRACT(EPOCH FROM clock_timestamp())", (UNIT,)).fetchone()
        return row[0] if row else None

    def probes(self, name: str) -> float:
        try:
            text = self.daemons[name].client.get("/metrics").text
        except httpx.HTTPError:
            return 0.0
        return sum(s.value for f in text_string_to_metric_families(text)
                   if f.name == "tfwarden_probe_requests" for s in f.samples
                   if s.name.endswith("_total") and s.labels.get("model") == "m")

    def close(self) -> None:
        for daemon in self.daemons.values():
            if daemon.proc.poll() is None:
                daemon.terminate()
            daemon.close()


def wait(predicate, timeout: float, poll: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"failover: not within {timeout}s")
        time.sleep(poll)
    return time.monotonic() - start


def trial(group: Group, how: str) -> tuple[float, float]:
    owner = group.owner()
    assert owner is not None
    others = [n for n in group.daemons if n != owner]
    before = {n: group.probes(n) for n in others}
    victim = group.daemons[owner]
    start = time.monotonic()
    if how == "kill":
        victim.proc.send_signal(signal.SIGKILL)
    else:
        victim.proc.send_signal(signal.SIGTERM)
    wait(lambda: group.owner() in others, 4 * group.lease + 10)
    owned = time.monotonic() - start
    new = group.owner()
    assert new is not None
    wait(lambda: group.probes(new) > before[new], 30, poll=0.05)
    probing = time.monotonic() - start
    victim.proc.wait(timeout=30)
    victim.close()
    group.start(owner)
    # settled (the restarted replica stands by), then a random phase against the rounds
    time.sleep(group.lease / 3 + 0.5 + random.uniform(0, group.lease / 3))
    return owned, probing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", default="3,15")
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tfwarden-failover-"))
    base = work / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    (work / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" } }')
    postgres = PostgresServer()
    dev = DevServer(f"--model_config_file={work / 'models.config'}", workdir=work)
    rows = []
    try:
        dev.wait_ready()
        for lease in [float(x) for x in args.leases.split(",")]:
            (work / "pg.dsn").write_text(postgres.new_database() + "\n")
            group = Group(work, (work / "pg.dsn").read_text().strip(), dev, lease)
            try:
                for name in ("r1", "r2", "r3"):
                    group.start(name)
                wait(lambda g=group: g.owner() is not None, 30)  # type: ignore[misc]
                for how in ("kill", "term"):
                    results = [trial(group, how) for _ in range(args.trials)]
                    owned, probing = [r[0] for r in results], [r[1] for r in results]
                    rows.append({"lease_s": lease, "stop": "kill -9" if how == "kill" else "SIGTERM",
                                 "trials": args.trials,
                                 "reowned_p50_s": round(statistics.median(owned), 2),
                                 "reowned_max_s": round(max(owned), 2),
                                 "probing_p50_s": round(statistics.median(probing), 2),
                                 "probing_max_s": round(max(probing), 2)})
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                group.close()
    finally:
        dev.stop()
        postgres.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print("| lease | stop | trials | re-owned p50 / max | probing again p50 / max |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lease_s']:g} s | {r['stop']} | {r['trials']} | {r['reowned_p50_s']} / "
              f"{r['reowned_max_s']} s | {r['probing_p50_s']} / {r['probing_max_s']} s |")


if __name__ == "__main__":
    main()
